//! Processes as `/proc` and the kernel show them, for the init, the Ray
//! supervisor and the dev runner alike: the process tree, who a process
//! is, and signals that reach only the process meant.
//!
//! It depends on none of them; they all use it.

pub mod death;
pub mod pin;
pub mod proctree;
