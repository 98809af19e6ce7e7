//! Writes etcd-client's generated gRPC modules into the directory named by the first argument,
//! exactly as the upstream build script (`build-server` off) writes them into `OUT_DIR`.
fn main() {
    let out = std::env::args().nth(1).expect("usage: etcd-client-regen OUT_DIR");
    let proto_root = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    let files = [
        "etcd/api/authpb/auth.proto",
        "etcd/api/etcdserverpb/rpc.proto",
        "etcd/api/mvccpb/kv.proto",
        "etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
        "etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
    ]
    .map(|f| format!("{proto_root}/{f}"));
    tonic_prost_build::configure()
        .build_server(false)
        .out_dir(out)
        .compile_protos(&files, &[proto_root.to_string()])
        .expect("protoc failed");
}
