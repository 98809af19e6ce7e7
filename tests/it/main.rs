//! Integration tests: real HTTP backends on 127.0.0.1:0, real clients, Gantry in-process through
//! `gantry::start` or as the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_debug_implementations)]

// Shared fixtures: not every helper is used by every test module at every point in history.
#[allow(dead_code)]
mod acme_support;
#[allow(dead_code)]
mod docker_support;
#[allow(dead_code)]
mod etcd_support;
#[allow(dead_code)]
mod support;

mod abuse;
mod access_log;
mod acme;
mod admin_api;
mod auth;
mod balancing;
mod canary;
mod cli;
mod compress;
mod dashboard;
mod docker;
mod errors;
mod etcd;
mod etcd_secure;
mod h2;
mod headers;
mod health;
mod hygiene;
mod idle;
mod image;
mod middleware;
mod mirror;
mod pages;
mod reload;
mod routing;
mod scaling;
mod shutdown;
mod streaming;
mod swarm;
mod tls;
mod trust;
mod websocket;
