//! Peer transport: postcard frames on persistent TCP connections (`codec`), the dialing side
//! (`client`), openraft's network traits on top of it (`network`), and the listening side
//! (`server`). Requests between nodes are Raft RPCs, snapshot chunks, and client requests a
//! follower forwards to the leader.

pub mod client;
pub mod codec;
pub mod network;
pub mod server;
