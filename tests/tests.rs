//! The integration tests: one binary, one shared harness (`util`).

mod ray_util;
mod util;

mod architecture;
mod cli;
mod container;
mod dev;
mod dev_walkthrough;
mod dist;
mod faults;
mod manifests;
mod pid1;
mod ray_apps;
mod ray_daemons;
mod ray_e2e;
mod ray_fake;
mod ray_memory;
mod ray_rocksdb;
mod redis;
