//! Gantry's control plane: what decides, beside the data plane that serves.
//!
//! ```text
//! acme       certificates from ACME CAs for the hosts routers ask them for
//! publish    the reconciler's sink: a reconciled table becomes a live snapshot; readiness,
//!            generation, per-source status and the last refused update
//! rollout    progressive rollouts: the pure judgement (`judge`) apart from the driver, one
//!            backing per file (`local`: this instance; `etcd`: the fleet, one driver at a time)
//! scaling    replica recommendations from the concurrency Gantry sees (`recommender`, pure) and
//!            their publication in etcd (`publish`)
//! scaler     the opt-in Docker scaler that acts on the recommendations
//! fleet      instance records and `gantry register`, in etcd
//! figures    each instance's per-version counters in etcd, summed by drivers over the fleet
//! time       wall-clock time for records that leave the process
//! ```
//!
//! It reads the data plane (`gantry-proxy`: counters, backend state) and writes desired state
//! through the reconciler (`gantry-discovery`) or etcd; the request path never calls into it.
//! Every etcd key it reads or writes is named in `gantry_discovery::etcd::keys`. Domain errors
//! are domain enums; the admin API (root crate) maps them to status codes in one place.

pub mod acme;
pub mod figures;
pub mod fleet;
pub mod publish;
pub mod rollout;
pub mod scaler;
pub mod scaling;
pub mod time;
