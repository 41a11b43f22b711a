//! The manager's gRPC service: registration, heartbeats, the map, the status report, and the
//! calls primaries and operators make to change replica sets.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use sealfs_core::FsError;
use sealfs_proto::pb::{self, manager_server};
use sealfs_proto::{map_to_pb, status_from_error};
use tonic::{Request, Response, Status};

use crate::state::{Refused, State};

/// The gRPC face of the manager.
pub struct ManagerService {
    state: Arc<Mutex<State>>,
    failure_timeout_ms: u64,
    security: sealfs_proto::auth::Security,
}

impl ManagerService {
    /// Serve `state`.
    pub fn new(
        state: Arc<Mutex<State>>,
        failure_timeout_ms: u64,
        security: sealfs_proto::auth::Security,
    ) -> ManagerService {
        ManagerService {
            state,
            failure_timeout_ms,
            security,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-changed on disk (it is written
        // whole); keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run a change and answer with the map it produced.
    fn change(
        &self,
        caller_epoch: u64,
        f: impl FnOnce(&mut State) -> Result<(), Refused>,
    ) -> Result<Response<pb::ClusterMapMsg>, Status> {
        let mut s = self.lock();
        match f(&mut s) {
            Ok(()) => Ok(Response::new(map_to_pb(&s.map))),
            Err(Refused::Invalid(m)) => Err(Status::invalid_argument(m)),
            Err(Refused::Stale(_)) => Err(status_from_error(&FsError::WrongEpoch {
                caller: caller_epoch,
                node: s.map.epoch,
            })),
            Err(Refused::Persist(e)) => Err(Status::internal(format!("{e:#}"))),
        }
    }
}

#[tonic::async_trait]
impl manager_server::Manager for ManagerService {
    async fn register(&self, req: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterReply>, Status> {
        let r = req.into_inner();
        let mut s = self.lock();
        match s.register(r.node_id, &r.addr, r.stats, r.fresh, Instant::now()) {
            Ok(reg) => Ok(Response::new(pb::RegisterReply {
                node_id: reg.node_id,
                cluster_id: reg.cluster_id,
            })),
            Err(Refused::Invalid(m)) => Err(Status::invalid_argument(m)),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatReply>, Status> {
        let r = req.into_inner();
        let mut s = self.lock();
        let reply = match s
            .heartbeat(r.node_id, r.stats, Instant::now())
            .map_err(|e| Status::internal(format!("{e:#}")))?
        {
            Some(epoch) => pb::HeartbeatReply {
                epoch,
                unknown_node: false,
                failure_timeout_ms: self.failure_timeout_ms,
            },
            None => pb::HeartbeatReply {
                epoch: s.map.epoch,
                unknown_node: true,
                failure_timeout_ms: self.failure_timeout_ms,
            },
        };
        Ok(Response::new(reply))
    }

    async fn get_map(&self, _req: Request<pb::GetMapRequest>) -> Result<Response<pb::ClusterMapMsg>, Status> {
        Ok(Response::new(map_to_pb(&self.lock().map)))
    }

    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        let s = self.lock();
        let now = Instant::now();
        let map = map_to_pb(&s.map);
        let nodes = s
            .map
            .nodes
            .iter()
            .zip(&map.nodes)
            .map(|(n, msg)| {
                let live = s.live.get(&n.id).cloned().unwrap_or_default();
                let replica = s.map.assignment.iter().filter(|r| r.in_sync.contains(&n.id)).count();
                let filling = s.map.assignment.iter().filter(|r| r.filling.contains(&n.id)).count();
                pb::NodeStatus {
                    node: Some(msg.clone()),
                    stats: Some(live.stats),
                    primary_partitions: s.map.primary_partitions(n.id).len() as u32,
                    last_heartbeat_ms_ago: live
                        .last_seen
                        .map(|t| now.duration_since(t).as_millis() as u64)
                        .unwrap_or(u64::MAX),
                    replica_partitions: replica as u32,
                    filling_partitions: filling as u32,
                }
            })
            .collect();
        Ok(Response::new(pb::StatusReply {
            map: Some(map),
            nodes,
            auth_refused: self.security.refused(),
        }))
    }

    async fn fill_done(&self, req: Request<pb::FillDoneRequest>) -> Result<Response<pb::ClusterMapMsg>, Status> {
        let r = req.into_inner();
        self.change(r.epoch, |s| s.fill_done(r.node_id, r.partition, r.target))
    }

    async fn replica_failed(
        &self,
        req: Request<pb::ReplicaFailedRequest>,
    ) -> Result<Response<pb::ClusterMapMsg>, Status> {
        let r = req.into_inner();
        self.change(r.epoch, |s| {
            s.replica_failed(r.node_id, r.partition, r.failed, &r.reason)
        })
    }

    async fn drain(&self, req: Request<pb::DrainRequest>) -> Result<Response<pb::ClusterMapMsg>, Status> {
        let r = req.into_inner();
        self.change(0, |s| s.drain(r.node_id, r.drain))
    }

    async fn remove_node(&self, req: Request<pb::RemoveNodeRequest>) -> Result<Response<pb::ClusterMapMsg>, Status> {
        let r = req.into_inner();
        self.change(0, |s| s.remove_node(r.node_id))
    }
}
