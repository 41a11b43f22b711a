//! Configuration as serde structs with defaults and validation. Every field can come from a TOML
//! file; the binaries overlay command-line flags and environment variables on top.

use serde::{Deserialize, Serialize};

/// Largest file sealfs accepts (writes past it get EFBIG): 16 TiB.
pub const MAX_FILE_SIZE: u64 = 16 << 40;
/// Largest payload of one read or write RPC.
pub const MAX_IO_SIZE: usize = 4 << 20;
/// Most writes one chunk-write RPC may carry as pieces (see `WriteChunkPieces`).
pub const MAX_CHUNK_PIECES: usize = 1024;
/// Largest gRPC message any sealfs server decodes; bigger ones are refused before decoding.
pub const MAX_MESSAGE_SIZE: usize = MAX_IO_SIZE + (64 << 10);
/// Largest xattr value.
pub const MAX_XATTR_VALUE: usize = 64 << 10;
/// Most bytes (names plus values) of all xattrs of one inode; more gets ENOSPC, as on a full
/// ext4 inode.
pub const MAX_XATTR_TOTAL: usize = 1 << 20;
/// Most xattrs on one inode.
pub const MAX_XATTR_COUNT: usize = 1024;
/// Largest read-ahead window a FUSE mount may ask the kernel for, in KiB (256 MiB).
pub const MAX_READAHEAD_KB: u32 = 256 << 10;
/// Largest read-around block of a FUSE mount, in KiB.
pub const MAX_READ_AROUND_KB: u32 = 1024;
/// Files up to this size are stored inline in their inode record: most files of a source tree
/// (94% of the 1,906 in the librocksdb-sys crate), which then cost no chunk files, no chunk
/// syncs and no second round trip to read.
pub const INLINE_MAX: u64 = 64 << 10;

/// A configuration error.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid config file {path}: {msg}")]
    Parse { path: String, msg: String },
    #[error("invalid setting {field}: {msg}")]
    Invalid { field: &'static str, msg: String },
}

/// Read a TOML config file into `T`; fields it does not name keep their defaults.
pub fn load_file<T: for<'de> Deserialize<'de>>(path: &std::path::Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        msg: e.to_string(),
    })
}

/// How a process proves it belongs to the cluster, and whether its connections use TLS. Every
/// manager, node, gateway, FUSE client and CLI of one cluster shares the secret (and, with TLS,
/// the CA).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// File holding the cluster secret (at least 16 characters; surrounding whitespace is
    /// ignored). Without it, the environment variable `SEALFS_SECRET` holds the secret itself.
    pub secret_file: Option<String>,
    /// Run without a cluster secret: calls are neither signed nor checked. Only for a cluster
    /// on a network nobody else can reach.
    pub insecure: bool,
    /// This process's certificate (PEM). Setting it, `tls_key` and `tls_ca` turns TLS on for
    /// every gRPC listener and connection of the process.
    pub tls_cert: Option<String>,
    /// The private key of `tls_cert` (PEM).
    pub tls_key: Option<String>,
    /// The cluster's CA certificate (PEM): peers must present a certificate it signed, both
    /// ways (mutual TLS).
    pub tls_ca: Option<String>,
    /// The name cluster certificates are issued for (checked by the connecting side); empty:
    /// "sealfs".
    pub tls_domain: String,
}

impl SecurityConfig {
    /// Whether TLS is configured.
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some() || self.tls_key.is_some() || self.tls_ca.is_some()
    }

    /// Check every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tls() && (self.tls_cert.is_none() || self.tls_key.is_none() || self.tls_ca.is_none()) {
            return Err(ConfigError::Invalid {
                field: "tls_cert",
                msg: "TLS needs all three of tls_cert, tls_key and tls_ca".into(),
            });
        }
        if self.insecure && self.secret_file.is_some() {
            return Err(ConfigError::Invalid {
                field: "insecure",
                msg: "insecure and secret_file exclude each other".into(),
            });
        }
        Ok(())
    }
}

/// Manager settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagerConfig {
    /// Address the gRPC server listens on.
    pub listen: String,
    /// Folder for the manager's persistent state (the cluster map).
    pub dir: String,
    /// Partitions of a new cluster: a power of two, at most 65536. Fixed once created.
    pub partitions: u32,
    /// Copies of each partition for a new cluster (fewer while there are fewer nodes).
    pub replication: u32,
    /// Nodes that must register before partitions are first assigned.
    pub min_nodes: u32,
    /// A node that has not heartbeated for this long is marked down.
    pub failure_timeout_ms: u64,
    /// Chunk size for file data of a new cluster: a power of two, 64 KiB to 64 MiB.
    pub chunk_size: u32,
    /// Cluster secret and TLS.
    pub security: SecurityConfig,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            listen: "127.0.0.1:7100".into(),
            dir: "./sealfs-manager".into(),
            partitions: 256,
            replication: 3,
            min_nodes: 1,
            failure_timeout_ms: 3000,
            chunk_size: 4 << 20,
            security: SecurityConfig::default(),
        }
    }
}

impl ManagerConfig {
    /// Check every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.security.validate()?;
        if !self.partitions.is_power_of_two() || self.partitions > 65536 {
            return Err(ConfigError::Invalid {
                field: "partitions",
                msg: format!("{} is not a power of two up to 65536", self.partitions),
            });
        }
        if self.replication == 0 || self.replication > 7 {
            return Err(ConfigError::Invalid {
                field: "replication",
                msg: "must be 1 to 7".into(),
            });
        }
        if self.min_nodes == 0 {
            return Err(ConfigError::Invalid {
                field: "min_nodes",
                msg: "must be at least 1".into(),
            });
        }
        if !self.chunk_size.is_power_of_two() || !(64 << 10..=64 << 20).contains(&self.chunk_size) {
            return Err(ConfigError::Invalid {
                field: "chunk_size",
                msg: "must be a power of two from 64 KiB to 64 MiB".into(),
            });
        }
        if self.failure_timeout_ms < 500 {
            return Err(ConfigError::Invalid {
                field: "failure_timeout_ms",
                msg: "must be at least 500".into(),
            });
        }
        Ok(())
    }
}

/// Storage node settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// The manager's address.
    pub manager: String,
    /// Address the gRPC server listens on.
    pub listen: String,
    /// Address other components use to reach this node (default: the bound listen address).
    pub advertise: Option<String>,
    /// Folder for the RocksDB metadata store.
    pub meta_dir: String,
    /// Folder for chunk data (may sit on another disk).
    pub data_dir: String,
    /// Interval between heartbeats to the manager.
    pub heartbeat_ms: u64,
    /// RocksDB block cache, in MiB (bounds the node's memory, not the file count).
    pub cache_mb: u64,
    /// Most gRPC connections one client address may hold open at once (more are closed).
    pub max_connections_per_client: u32,
    /// Seconds from the end of one scrub pass to the start of the next (0: no scrub). A pass
    /// reads every chunk this node holds in sync back from the disk, checks it against its
    /// checksums and mends a bad block from another replica, so a copy that rots unread is put
    /// right while the other copies still hold the data. Default: a week.
    pub scrub_interval_secs: u64,
    /// How fast a scrub pass reads, in MiB per second (it shares the disk with clients).
    pub scrub_mib_per_sec: u64,
    /// Cluster secret and TLS.
    pub security: SecurityConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            manager: "127.0.0.1:7100".into(),
            listen: "127.0.0.1:7101".into(),
            advertise: None,
            meta_dir: "./sealfs-node/meta".into(),
            data_dir: "./sealfs-node/data".into(),
            heartbeat_ms: 1000,
            cache_mb: 64,
            max_connections_per_client: 256,
            scrub_interval_secs: 7 * 24 * 3600,
            scrub_mib_per_sec: 32,
            security: SecurityConfig::default(),
        }
    }
}

impl NodeConfig {
    /// Check every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.security.validate()?;
        if self.max_connections_per_client == 0 {
            return Err(ConfigError::Invalid {
                field: "max_connections_per_client",
                msg: "must be at least 1".into(),
            });
        }
        if self.meta_dir.is_empty() {
            return Err(ConfigError::Invalid {
                field: "meta_dir",
                msg: "must not be empty".into(),
            });
        }
        if self.data_dir.is_empty() {
            return Err(ConfigError::Invalid {
                field: "data_dir",
                msg: "must not be empty".into(),
            });
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms > 60_000 {
            return Err(ConfigError::Invalid {
                field: "heartbeat_ms",
                msg: "must be 1 to 60000".into(),
            });
        }
        if self.scrub_mib_per_sec == 0 || self.scrub_mib_per_sec > 1 << 20 {
            return Err(ConfigError::Invalid {
                field: "scrub_mib_per_sec",
                msg: "must be 1 to 1048576 (turn the scrub off with scrub_interval_secs = 0)".into(),
            });
        }
        if self.scrub_interval_secs > 10 * 365 * 24 * 3600 {
            return Err(ConfigError::Invalid {
                field: "scrub_interval_secs",
                msg: "must be at most ten years (0 turns the scrub off)".into(),
            });
        }
        Ok(())
    }
}

/// Client library settings (FUSE client, gateway, and node-to-node calls).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// The manager's address.
    pub manager: String,
    /// Deadline of one RPC attempt.
    pub rpc_timeout_ms: u64,
    /// How long an operation keeps retrying a partition whose node is unreachable before it
    /// fails with EIO: long enough to ride out a failover (a partition with no live copy left
    /// fails at once).
    pub retry_deadline_ms: u64,
    /// How long the FUSE kernel may cache attributes and entries.
    pub attr_ttl_ms: u64,
    /// How long it may cache them while the mount hears every node's changes (change streams
    /// up: other processes' changes are invalidated as they commit). It bounds how stale a
    /// cache can get only when a stream breaks. 0, or at most `attr_ttl_ms`: streams off.
    pub watched_ttl_ms: u64,
    /// FUSE mount only: the kernel's read-ahead window for each open file, in KiB (the mount's
    /// `read_ahead_kb` in /sys/class/bdi), set at mount time when running as root. The kernel
    /// gives a FUSE mount 128 KiB, which keeps about one request at a time in flight to the
    /// nodes on a sequential read; a few MiB keep several chunks' reads going at once.
    /// 0 leaves the kernel's setting alone.
    pub readahead_kb: u32,
    /// FUSE mount only: a read smaller than this many KiB (a random read: sequential ones come
    /// in read-ahead windows) fetches the whole aligned block of this size around it, and the
    /// rest of the block goes into the kernel's page cache, so random reads of a file that
    /// fits in memory warm it up in blocks, not pages. Only while no handle of the file that
    /// may write is open in the mount, and never for `O_DIRECT` reads. 0: reads fetch what is
    /// asked. A multiple of 4, at most 1024.
    pub read_around_kb: u32,
    /// FUSE mount only: files larger than this many MiB are read as asked: random reads over
    /// a file that cannot stay cached would fetch a block for every page they read.
    pub read_around_max_file_mib: u64,
    /// Cluster secret and TLS.
    pub security: SecurityConfig,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            manager: "127.0.0.1:7100".into(),
            rpc_timeout_ms: 5_000,
            retry_deadline_ms: 30_000,
            attr_ttl_ms: 1000,
            watched_ttl_ms: 10_000,
            readahead_kb: 8192,
            read_around_kb: 128,
            read_around_max_file_mib: 1024,
            security: SecurityConfig::default(),
        }
    }
}

impl ClientConfig {
    /// Check every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.security.validate()?;
        if self.rpc_timeout_ms < 100 {
            return Err(ConfigError::Invalid {
                field: "rpc_timeout_ms",
                msg: "must be at least 100".into(),
            });
        }
        if self.attr_ttl_ms > 60_000 {
            return Err(ConfigError::Invalid {
                field: "attr_ttl_ms",
                msg: "must be at most 60000".into(),
            });
        }
        if self.watched_ttl_ms > 600_000 {
            return Err(ConfigError::Invalid {
                field: "watched_ttl_ms",
                msg: "must be at most 600000".into(),
            });
        }
        if self.readahead_kb > MAX_READAHEAD_KB {
            return Err(ConfigError::Invalid {
                field: "readahead_kb",
                msg: format!("must be at most {MAX_READAHEAD_KB} (KiB)"),
            });
        }
        if self.read_around_kb > MAX_READ_AROUND_KB || !self.read_around_kb.is_multiple_of(4) {
            return Err(ConfigError::Invalid {
                field: "read_around_kb",
                msg: format!("must be a multiple of 4 (KiB), at most {MAX_READ_AROUND_KB}"),
            });
        }
        Ok(())
    }
}

/// NFS gateway settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// The manager's address.
    pub manager: String,
    /// Address NFSv3 and MOUNT listen on (2049 is what clients expect).
    pub nfs_listen: String,
    /// Address the portmapper listens on, TCP and UDP (111 is what mount.nfs asks); empty: none.
    pub portmap_listen: String,
    /// The export's path as clients mount it ("/" is the whole cluster; "/a/b" a subtree).
    pub export: String,
    /// Refuse every change (NFS3ERR_ROFS).
    pub read_only: bool,
    /// Map uid 0 to `anon_uid`/`anon_gid`.
    pub root_squash: bool,
    /// Map every user to `anon_uid`/`anon_gid`.
    pub all_squash: bool,
    /// The uid squashed callers get.
    pub anon_uid: u32,
    /// The gid squashed callers get.
    pub anon_gid: u32,
    /// Client networks allowed to mount and call (CIDR, e.g. "10.0.0.0/8", "::1/128"); others are
    /// refused at MOUNT and on every NFS call.
    pub allowed_networks: Vec<String>,
    /// Largest READ and WRITE offered to clients, in bytes (at most 1 MiB).
    pub max_io: u32,
    /// Most NFS connections one client address may hold open at once (more are closed).
    pub max_connections_per_client: u32,
    /// How long the gateway may answer GETATTR and ACCESS from its own attribute cache, in ms.
    /// The cache is kept right by one change stream per node (other processes' changes drop
    /// their entries as they commit) and is used only while every node's stream is live; this
    /// bounds how stale an entry can get only if a change is missed. 0: no cache, every call asks
    /// a node.
    pub attr_cache_ms: u64,
    /// Cluster secret and TLS for the gateway's calls into the cluster (the NFS listener itself
    /// is plain NFSv3: restrict it with `allowed_networks`).
    pub security: SecurityConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            manager: "127.0.0.1:7100".into(),
            nfs_listen: "0.0.0.0:2049".into(),
            portmap_listen: "0.0.0.0:111".into(),
            export: "/".into(),
            read_only: false,
            root_squash: false,
            all_squash: false,
            anon_uid: 65534,
            anon_gid: 65534,
            allowed_networks: vec!["0.0.0.0/0".into(), "::/0".into()],
            max_io: 1 << 20,
            max_connections_per_client: 64,
            attr_cache_ms: 10_000,
            security: SecurityConfig::default(),
        }
    }
}

impl GatewayConfig {
    /// The allowed networks, parsed (a bare address is a /32 or /128).
    pub fn networks(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        self.allowed_networks
            .iter()
            .map(|n| {
                n.parse::<ipnet::IpNet>()
                    .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| ConfigError::Invalid {
                        field: "allowed_networks",
                        msg: format!("{n:?} is not a network (CIDR) or address"),
                    })
            })
            .collect()
    }

    /// Check every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.security.validate()?;
        self.networks()?;
        if self.max_connections_per_client == 0 {
            return Err(ConfigError::Invalid {
                field: "max_connections_per_client",
                msg: "must be at least 1".into(),
            });
        }
        if !self.export.starts_with('/') {
            return Err(ConfigError::Invalid {
                field: "export",
                msg: "must start with /".into(),
            });
        }
        if !(4096..=1 << 20).contains(&self.max_io) {
            return Err(ConfigError::Invalid {
                field: "max_io",
                msg: "must be 4096 to 1048576".into(),
            });
        }
        if self.attr_cache_ms > 600_000 {
            return Err(ConfigError::Invalid {
                field: "attr_cache_ms",
                msg: "must be at most 600000".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        ManagerConfig::default().validate().unwrap();
        NodeConfig::default().validate().unwrap();
        ClientConfig::default().validate().unwrap();
    }

    #[test]
    fn gateway_networks() {
        let c = GatewayConfig {
            allowed_networks: vec!["10.0.0.0/8".into(), "127.0.0.1".into()],
            ..Default::default()
        };
        let n = c.networks().unwrap();
        assert!(n[0].contains(&"10.1.2.3".parse::<std::net::IpAddr>().unwrap()));
        assert!(n[1].contains(&"127.0.0.1".parse::<std::net::IpAddr>().unwrap()));
        let bad = GatewayConfig {
            allowed_networks: vec!["10.0.0/8x".into()],
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("allowed_networks"));
        GatewayConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_values_are_named() {
        let c = ManagerConfig {
            partitions: 100,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("partitions"));
        let c = ManagerConfig {
            chunk_size: 1000,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("chunk_size"));
        let c = ClientConfig {
            readahead_kb: MAX_READAHEAD_KB + 1,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("readahead_kb"));
        let c = ClientConfig {
            readahead_kb: 0,
            ..Default::default()
        };
        c.validate().unwrap();
        for bad in [MAX_READ_AROUND_KB + 4, 6] {
            let c = ClientConfig {
                read_around_kb: bad,
                ..Default::default()
            };
            assert!(c.validate().unwrap_err().to_string().contains("read_around_kb"));
        }
        let c = NodeConfig {
            scrub_mib_per_sec: 0,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("scrub_mib_per_sec"));
        let c = NodeConfig {
            scrub_interval_secs: 0,
            ..Default::default()
        };
        c.validate().unwrap();
    }

    #[test]
    fn file_overrides_some_fields() {
        let c: ManagerConfig = toml::from_str("partitions = 64\n").unwrap();
        assert_eq!(c.partitions, 64);
        assert_eq!(c.replication, 3);
        assert!(toml::from_str::<ManagerConfig>("bogus = 1\n").is_err());
    }
}
