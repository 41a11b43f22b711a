//! sealfs-core: the bottom of the crate stack. Types (inode ids, attributes), the POSIX-shaped
//! error, permission and name rules, reading the kernel's mount tables, the cluster map with
//! its pure placement functions, and configuration. No network code lives here.

pub mod attr;
pub mod config;
pub mod error;
pub mod hash;
pub mod ids;
pub mod mounts;
pub mod name;
pub mod perm;
pub mod placement;

pub use attr::{FileAttr, FileKind, SetAttr, TimeSpec, TimeUpdate};
pub use error::{FsError, FsResult};
pub use ids::{InodeId, NodeId, PartitionId, ROOT_INO};
pub use perm::Credentials;
pub use placement::{ClusterMap, NodeInfo, NodeState};
