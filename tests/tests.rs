//! The integration tests: one binary, one shared kit. The suites import
//! from the kit only, never from each other:
//! - `util`: a rayhead run (Dir, TestCommand, Output) and generic helpers;
//! - `wait`: every wait for a condition, and `holds_for`'s negative window;
//! - `redis_util`: a real redis-server;
//! - `ray_util`: a real Ray cluster (RayTest, Head, workers, the GCS);
//! - `ray_drivers`: what runs on one (python drivers, Scripts, the guide's
//!   scenario);
//! - `dev_util`: the fake Ray and `rayhead dev`'s harness.

mod dev_util;
mod ray_drivers;
mod ray_util;
mod redis_util;
mod util;
mod wait;

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
