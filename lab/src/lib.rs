//! handover's lab: the whole data path on one machine, with real processes. [`localpool`] starts
//! pods (a sidecar and an app each, in network namespaces when it may: [`netns`]) and drives them
//! with clients, [`demo`] kills pods under load, [`demo_app`] is the example app that speaks the
//! sidecar's contract, and [`bench`](mod@bench) measures throughput and latency (against nginx, HAProxy and
//! [`lean_proxy`], a minimal Rust proxy that shows what the transport alone costs).
//!
//! It depends on the data path (`handover-dataplane`), never the reverse; the `handover-sidecar`
//! binary runs it (`demo`, `demo-app`, `bench`) and its integration tests drive it.

#![forbid(unsafe_code)]

pub mod bench;
pub mod demo;
pub mod demo_app;
pub mod lean_proxy;
pub mod localpool;
pub mod netns;
