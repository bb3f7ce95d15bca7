//! rayhead's entry point: all logic lives in the library.

fn main() {
    std::process::exit(i32::from(rayhead::cli::main()));
}
