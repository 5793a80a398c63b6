//! Peer transport: postcard frames on persistent TCP connections (`codec`), the dialing side
//! (`client`), openraft's network traits on top of it (`network`), the listening side
//! (`server`), and the checks on Raft requests from peers before openraft sees them
//! (`validate`). Requests between nodes are Raft RPCs, snapshot chunks, and client requests a
//! follower forwards to the leader.

pub mod client;
pub mod codec;
pub mod network;
pub mod server;
pub mod validate;
