use super::*;
use std::sync::Mutex;

#[derive(Default)]
struct Recorder {
    published: Mutex<Vec<Arc<RoutingTable>>>,
    rejected: Mutex<Vec<String>>,
    warnings: Mutex<BTreeMap<SourceId, String>>,
}

impl Recorder {
    fn warnings(&self, s: SourceId) -> String {
        self.warnings.lock().unwrap().get(&s).cloned().unwrap_or_default()
    }

    /// Which service router `name` sends to in the latest table.
    fn route(&self, name: &str) -> Option<String> {
        let p = self.published.lock().unwrap();
        p.last()?
            .routes()
            .find(|r| &*r.name == name)
            .map(|r| r.service_name.to_string())
    }
}

impl Sink for Recorder {
    fn publish(&self, table: Arc<RoutingTable>) -> u64 {
        let mut p = self.published.lock().unwrap();
        p.push(table);
        p.len() as u64
    }
    fn rejected(&self, _: SourceId, errors: &Errors) {
        self.rejected.lock().unwrap().push(errors.to_string());
    }
    fn warnings(&self, s: SourceId, w: &Errors) {
        self.warnings.lock().unwrap().insert(s, w.to_string());
    }
}

fn from(source: SourceId, origin: &str, text: &str) -> Update {
    Update::from_result(source, origin.into(), state(text))
}

fn changed(source: SourceId, changes: Changes) -> Update {
    Update {
        source,
        origin: "etcd".into(),
        report: Report::Changed {
            changes,
            warnings: Errors::new(),
        },
        revision: Some(1),
        origins: Default::default(),
    }
}

fn state(text: &str) -> Result<DesiredState, Errors> {
    gantry_config::file::load(text, "g.toml").map(|v| v.state)
}

fn update(text: &str) -> Update {
    Update::from_result(SourceId::File, "g.toml".into(), state(text))
}

const A: &str = "[routers.r]\npath = \"/a\"\nservice = \"s\"\n[services.s]\nbackends = [{ url = \"http://127.0.0.1:1\" }]\n";

#[test]
fn publishes_changes_only() {
    let rec = Arc::new(Recorder::default());
    let mut r = Reconciler::new(vec!["web".into()], rec.clone());
    assert_eq!(r.apply(update(A)), Outcome::Published(1));
    assert_eq!(r.apply(update(&format!("# comment\n{A}"))), Outcome::Unchanged);
    assert_eq!(r.apply(update(&A.replace("/a", "/b"))), Outcome::Published(2));
    assert_eq!(rec.published.lock().unwrap().len(), 2);
}

#[test]
fn invalid_or_dangling_updates_keep_the_last_good_table() {
    let rec = Arc::new(Recorder::default());
    let mut r = Reconciler::new(vec!["web".into()], rec.clone());
    assert_eq!(r.apply(update(A)), Outcome::Published(1));
    assert_eq!(r.apply(update("[routers.r]\npath = 3\n")), Outcome::Rejected);
    assert_eq!(
        r.apply(update(&A.replace("service = \"s\"", "service = \"nope\""))),
        Outcome::Rejected
    );
    let rejected = rec.rejected.lock().unwrap().clone();
    assert!(
        rejected[1].contains("g.toml: routers.r.service: unknown service \"nope\""),
        "{rejected:?}"
    );
    // Back to the good file: nothing changed relative to what is live.
    assert_eq!(r.apply(update(A)), Outcome::Unchanged);
    assert_eq!(rec.published.lock().unwrap().len(), 1);
}

#[test]
fn weights_apply_over_the_service_whoever_declares_it_and_admin_wins_over_etcd() {
    let rec = Arc::new(Recorder::default());
    let mut r = Reconciler::new(vec!["web".into()], rec.clone());
    let v = "[routers.r]\npath = \"/a\"\nservice = \"s\"\n[services.s]\nversions = { v1 = 90, v2 = 10 }\nbackends = [{ url = \"http://127.0.0.1:1\", version = \"v1\" }, { url = \"http://127.0.0.1:2\", version = \"v2\" }]\n";
    r.apply(from(SourceId::Docker, "docker", v));
    let versions = |rec: &Recorder| {
        let p = rec.published.lock().unwrap();
        let t = p.last().unwrap();
        t.services()
            .find(|s| &*s.name == "s")
            .unwrap()
            .spec
            .versions
            .clone()
    };
    let w = |a: u32, b: u32| BTreeMap::from([("v1".to_string(), a), ("v2".to_string(), b)]);
    assert_eq!(versions(&rec), w(90, 10));
    let mut etcd = Changes::default();
    etcd.weights.insert("s".into(), Some(w(50, 50).into()));
    assert!(matches!(
        r.apply(changed(SourceId::Etcd, etcd)),
        Outcome::Published(_)
    ));
    assert_eq!(versions(&rec), w(50, 50));
    let mut admin = Changes::default();
    admin.weights.insert("s".into(), Some(w(0, 100).into()));
    r.apply(changed(SourceId::Admin, admin.clone()));
    assert_eq!(versions(&rec), w(0, 100));
    // The service changes underneath: the weights stay over it.
    r.apply(from(
        SourceId::Docker,
        "docker",
        &v.replace("path = \"/a\"", "path = \"/b\""),
    ));
    assert_eq!(versions(&rec), w(0, 100));
    // Lifted weights give way to the next source's, then to the declared ones.
    admin.weights.insert("s".into(), None);
    r.apply(changed(SourceId::Admin, admin));
    assert_eq!(versions(&rec), w(50, 50));
    let mut etcd = Changes::default();
    etcd.weights.insert("s".into(), None);
    r.apply(changed(SourceId::Etcd, etcd));
    assert_eq!(versions(&rec), w(90, 10));
}

const SVC_T: &str = "[services.t]\nbackends = [{ url = \"http://127.0.0.1:2\" }]\n";

#[test]
fn the_first_source_wins_a_name_and_the_next_takes_over_when_it_leaves() {
    let rec = Arc::new(Recorder::default());
    let mut r = Reconciler::new(vec!["web".into()], rec.clone());
    r.apply(update(A));
    let docker = format!("[routers.r]\npath = \"/d\"\nservice = \"t\"\n{SVC_T}");
    assert!(matches!(
        r.apply(from(SourceId::Docker, "docker", &docker)),
        Outcome::Published(_)
    ));
    assert_eq!(rec.route("r").as_deref(), Some("s"));
    assert!(
        rec.warnings(SourceId::Docker)
            .contains("docker: routers.r: ignored: already declared by g.toml"),
        "{}",
        rec.warnings(SourceId::Docker)
    );
    // The file lets go of r: Docker's r goes live, and the conflict is over.
    r.apply(update(&A.replace("[routers.r]", "[routers.other]")));
    assert_eq!(rec.route("r").as_deref(), Some("t"));
    assert_eq!(rec.warnings(SourceId::Docker), "");
}

#[test]
fn a_refused_item_goes_live_when_what_it_needs_appears() {
    let rec = Arc::new(Recorder::default());
    let mut r = Reconciler::new(vec!["web".into()], rec.clone());
    r.apply(update(A));
    // Docker's router names a service nobody declares: refused, reported, the rest applies.
    let docker = "[routers.d]\npath = \"/d\"\nservice = \"t\"\n[routers.e]\npath = \"/e\"\nservice = \"s\"\n";
    assert!(matches!(
        r.apply(from(SourceId::Docker, "docker", docker)),
        Outcome::Published(_)
    ));
    assert_eq!(rec.route("d"), None);
    assert_eq!(rec.route("e").as_deref(), Some("s"));
    assert!(
        rec.warnings(SourceId::Docker)
            .contains("docker: routers.d.service: unknown service \"t\"")
    );
    // The file adds the service: the refused router goes live with it.
    r.apply(update(&format!("{A}{SVC_T}")));
    assert_eq!(rec.route("d").as_deref(), Some("t"));
    assert_eq!(rec.warnings(SourceId::Docker), "");
}

#[test]
fn a_change_removing_a_service_in_use_is_refused_until_it_is_free() {
    let rec = Arc::new(Recorder::default());
    let mut r = Reconciler::new(vec!["web".into()], rec.clone());
    // The file routes to a service that etcd declares.
    let etcd_state = state(SVC_T).unwrap();
    assert_eq!(
        r.apply(Update {
            source: SourceId::Etcd,
            origin: "etcd".into(),
            report: Report::Valid {
                state: etcd_state.clone(),
                warnings: Errors::new()
            },
            revision: Some(1),
            origins: Default::default(),
        }),
        Outcome::Published(1)
    );
    r.apply(update("[routers.f]\npath = \"/f\"\nservice = \"t\"\n"));
    assert_eq!(rec.route("f").as_deref(), Some("t"));
    let mut gone = Changes::default();
    gone.services.insert("t".into(), None);
    assert_eq!(r.apply(changed(SourceId::Etcd, gone)), Outcome::Unchanged);
    assert_eq!(
        rec.route("f").as_deref(),
        Some("t"),
        "the service stays while it is used"
    );
    assert!(
        rec.warnings(SourceId::Etcd)
            .contains("services.t: cannot be removed: still used by routers.f"),
        "{}",
        rec.warnings(SourceId::Etcd)
    );
    // The router goes: so does the service, at last.
    assert!(matches!(r.apply(update("")), Outcome::Published(_)));
    let p = rec.published.lock().unwrap();
    assert_eq!(p.last().unwrap().service_count(), 0);
    drop(p);
    assert_eq!(rec.warnings(SourceId::Etcd), "");
}

#[test]
fn changes_and_whole_views_end_in_the_same_table() {
    let rec = Arc::new(Recorder::default());
    let mut r = Reconciler::new(vec!["web".into()], rec.clone());
    let mut c = Changes::default();
    c.services
        .insert("t".into(), Some(state(SVC_T).unwrap().services["t"].clone()));
    c.routers.insert(
        "x".into(),
        Some(
            state(&format!("[routers.x]\npath = \"/x\"\nservice = \"t\"\n{SVC_T}"))
                .unwrap()
                .routers["x"]
                .clone(),
        ),
    );
    assert_eq!(r.apply(changed(SourceId::Etcd, c.clone())), Outcome::Published(1));
    assert_eq!(
        r.apply(changed(SourceId::Etcd, c)),
        Outcome::Unchanged,
        "the same change again changes nothing"
    );
    // A whole view with the same content: nothing to do either.
    let whole = state(&format!("[routers.x]\npath = \"/x\"\nservice = \"t\"\n{SVC_T}")).unwrap();
    let u = Update {
        source: SourceId::Etcd,
        origin: "etcd".into(),
        report: Report::Valid {
            state: whole,
            warnings: Errors::new(),
        },
        revision: Some(2),
        origins: Default::default(),
    };
    assert_eq!(r.apply(u), Outcome::Unchanged);
    assert_eq!(rec.route("x").as_deref(), Some("t"));
}
