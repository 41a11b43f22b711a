//! sealfs storage node: serves the partitions the cluster map gives it. Metadata lives in RocksDB
//! (under --meta-dir), file data in chunk files (under --data-dir). Every mutation is durable
//! before it is acknowledged.

pub mod batch;
pub mod chunks;
pub mod direct;
pub mod failpoint;
pub mod keys;
pub mod locks;
pub mod node;
pub mod openfiles;
pub mod ops;
pub mod records;
pub mod replication;
pub mod scrub;
pub mod server;
pub mod service;
pub mod store;
pub mod sums;
pub mod tx;
pub mod watch;

pub use server::run;
