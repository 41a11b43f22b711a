//! The manager's gRPC service: registration, heartbeats, the map and the status report.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use sealfs_proto::map_to_pb;
use sealfs_proto::pb::{self, manager_server};
use tonic::{Request, Response, Status};

use crate::state::State;

/// The gRPC face of the manager.
pub struct ManagerService {
    state: Arc<Mutex<State>>,
}

impl ManagerService {
    /// Serve `state`.
    pub fn new(state: Arc<Mutex<State>>) -> ManagerService {
        ManagerService { state }
    }
}

fn internal(e: anyhow::Error) -> Status {
    Status::internal(format!("{e:#}"))
}

#[tonic::async_trait]
impl manager_server::Manager for ManagerService {
    async fn register(&self, req: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterReply>, Status> {
        let r = req.into_inner();
        let mut s = self.state.lock().expect("state lock");
        let reg = s.register(r.node_id, &r.addr, r.stats, Instant::now()).map_err(|e| {
            if e.to_string().contains("address") {
                Status::invalid_argument(e.to_string())
            } else {
                internal(e)
            }
        })?;
        Ok(Response::new(pb::RegisterReply {
            node_id: reg.node_id,
            cluster_id: reg.cluster_id,
        }))
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatReply>, Status> {
        let r = req.into_inner();
        let mut s = self.state.lock().expect("state lock");
        let reply = match s.heartbeat(r.node_id, r.stats, Instant::now()).map_err(internal)? {
            Some(epoch) => pb::HeartbeatReply {
                epoch,
                unknown_node: false,
            },
            None => pb::HeartbeatReply {
                epoch: s.map.epoch,
                unknown_node: true,
            },
        };
        Ok(Response::new(reply))
    }

    async fn get_map(&self, _req: Request<pb::GetMapRequest>) -> Result<Response<pb::ClusterMapMsg>, Status> {
        let s = self.state.lock().expect("state lock");
        Ok(Response::new(map_to_pb(&s.map)))
    }

    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        let s = self.state.lock().expect("state lock");
        let now = Instant::now();
        let map = map_to_pb(&s.map);
        let nodes = s
            .map
            .nodes
            .iter()
            .zip(&map.nodes)
            .map(|(n, msg)| {
                let live = s.live.get(&n.id).cloned().unwrap_or_default();
                pb::NodeStatus {
                    node: Some(msg.clone()),
                    stats: Some(live.stats),
                    primary_partitions: s.map.primary_partitions(n.id).len() as u32,
                    last_heartbeat_ms_ago: live
                        .last_seen
                        .map(|t| now.duration_since(t).as_millis() as u64)
                        .unwrap_or(u64::MAX),
                }
            })
            .collect();
        Ok(Response::new(pb::StatusReply { map: Some(map), nodes }))
    }
}
