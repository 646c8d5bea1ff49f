//! The fake daemon's volume service, and the volume verbs driven against it: create with
//! options and labels, the `ls` table and filters, inspect, rm with its in-use refusal, and
//! prune with its prompt.

use std::collections::HashMap;

use prost_types::Timestamp;
use shoal_api::v1::{self, volumes_server::Volumes};
use tonic::{Request, Response, Status};

use super::{Fake, Harness};

/// The volumes the fake holds, and what the verbs sent it.
#[derive(Default)]
pub(super) struct Store {
    volumes: Vec<v1::Volume>,
    last_filters: Vec<v1::VolumeFilter>,
    pruned_all: Option<bool>,
}

impl Store {
    fn find(&self, name: &str) -> Result<usize, Status> {
        self.volumes
            .iter()
            .position(|v| v.name == name)
            .ok_or_else(|| Status::not_found(format!("no such volume: {name}")))
    }
}

impl Fake {
    fn volumes<T>(&self, call: &'static str, f: impl FnOnce(&mut Store) -> T) -> T {
        self.with(call, |s| f(&mut s.volumes))
    }
}

fn volume(name: &str, anonymous: bool, used_by: &[&str]) -> v1::Volume {
    v1::Volume {
        name: name.into(),
        driver: "local".into(),
        mountpoint: format!("/var/lib/shoal/volumes/{name}/_data"),
        created_at: Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        scope: "local".into(),
        anonymous,
        used_by: used_by.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Volumes for Fake {
    async fn create(
        &self,
        req: Request<v1::CreateVolumeRequest>,
    ) -> Result<Response<v1::Volume>, Status> {
        self.volumes("CreateVolume", |s| {
            let req = req.into_inner();
            if req.options.keys().any(|k| k != "type" && k != "o") {
                return Err(Status::invalid_argument("invalid volume option \"colour\""));
            }
            let name = if req.name.is_empty() {
                "f".repeat(64)
            } else {
                req.name
            };
            let mut created = volume(&name, false, &[]);
            created.labels = req.labels;
            created.options = req.options;
            s.volumes.push(created.clone());
            Ok(Response::new(created))
        })
    }

    async fn inspect(&self, req: Request<v1::VolumeRef>) -> Result<Response<v1::Volume>, Status> {
        self.volumes("InspectVolume", |s| {
            let i = s.find(&req.get_ref().name)?;
            Ok(Response::new(s.volumes[i].clone()))
        })
    }

    async fn list(
        &self,
        req: Request<v1::ListVolumesRequest>,
    ) -> Result<Response<v1::ListVolumesResponse>, Status> {
        self.volumes("ListVolumes", |s| {
            s.last_filters = req.into_inner().filters;
            let dangling_only = s
                .last_filters
                .iter()
                .any(|f| f.key == "dangling" && f.value == "true");
            Ok(Response::new(v1::ListVolumesResponse {
                volumes: s
                    .volumes
                    .iter()
                    .filter(|v| !dangling_only || v.used_by.is_empty())
                    .cloned()
                    .collect(),
            }))
        })
    }

    async fn remove(
        &self,
        req: Request<v1::RemoveVolumeRequest>,
    ) -> Result<Response<v1::RemoveVolumeResponse>, Status> {
        self.volumes("RemoveVolume", |s| {
            let req = req.into_inner();
            let i = match s.find(&req.name) {
                Ok(i) => i,
                Err(_) if req.force => return Ok(Response::new(v1::RemoveVolumeResponse {})),
                Err(status) => return Err(status),
            };
            if !s.volumes[i].used_by.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "remove {}: volume is in use - [{}]",
                    req.name,
                    s.volumes[i].used_by.join(", ")
                )));
            }
            s.volumes.remove(i);
            Ok(Response::new(v1::RemoveVolumeResponse {}))
        })
    }

    async fn prune(
        &self,
        req: Request<v1::PruneVolumesRequest>,
    ) -> Result<Response<v1::PruneVolumesResponse>, Status> {
        self.volumes("PruneVolumes", |s| {
            let all = req.get_ref().all;
            s.pruned_all = Some(all);
            let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut s.volumes)
                .into_iter()
                .partition(|v| v.used_by.is_empty() && (all || v.anonymous));
            s.volumes = kept;
            Ok(Response::new(v1::PruneVolumesResponse {
                deleted: gone.into_iter().map(|v| v.name).collect(),
                reclaimed_bytes: 1200,
            }))
        })
    }
}

fn seed(h: &Harness) {
    h.fake.0.lock().unwrap().volumes.volumes = vec![
        volume("data", false, &["c1"]),
        volume(&"a".repeat(64), true, &[]),
        volume("cache", false, &[]),
    ];
}

#[tokio::test]
async fn create_prints_the_name_and_sends_options_and_labels() {
    let h = Harness::start().await;
    let out = h
        .ok(&[
            "volume",
            "create",
            "--label",
            "tier=db",
            "-o",
            "type=tmpfs",
            "-o",
            "o=size=64m,uid=1000",
            "scratch",
        ])
        .await;
    assert_eq!(out, "scratch\n");
    let created = h.fake.0.lock().unwrap().volumes.volumes[0].clone();
    assert_eq!(
        created.labels,
        HashMap::from([("tier".into(), "db".into())])
    );
    assert_eq!(created.options["o"], "size=64m,uid=1000");
    // No name: the daemon picks one.
    assert_eq!(
        h.ok(&["volume", "create"]).await,
        format!("{}\n", "f".repeat(64))
    );
    // The daemon's refusal is one line.
    let outcome = h
        .run_io(
            &["volume", "create", "-o", "colour=blue", "x1"],
            b"",
            false,
            false,
        )
        .await;
    assert_eq!(outcome.error(), "invalid volume option \"colour\"");
}

#[tokio::test]
async fn bad_names_and_options_send_nothing() {
    let h = Harness::start().await;
    for (args, want) in [
        (&["volume", "create", "a"][..], "invalid volume name \"a\""),
        (&["volume", "create", "bad/name"], "invalid volume name"),
        (&["volume", "create", "--name=-x"], "invalid volume name"),
        (&["volume", "create", "-o", "type"], "expected KEY=VALUE"),
        (
            &[
                "volume",
                "create",
                "-o",
                "type=tmpfs",
                "-o",
                "type=none",
                "v1",
            ],
            "given more than once",
        ),
    ] {
        let outcome = h.run_io(args, b"", false, false).await;
        let error = outcome.error();
        assert!(error.contains(want), "{args:?}: {error}");
        assert!(!error.contains('\n'), "{error}");
    }
    assert!(h.fake.calls().is_empty(), "{:?}", h.fake.calls());
}

#[tokio::test]
async fn ls_table_quiet_and_filters() {
    let h = Harness::start().await;
    seed(&h);
    let anon = "a".repeat(64);
    assert_eq!(
        h.ok(&["volume", "ls"]).await,
        format!("DRIVER    VOLUME NAME\nlocal     {anon}\nlocal     cache\nlocal     data\n")
    );
    assert_eq!(
        h.ok(&["volume", "ls", "-q", "-f", "dangling=true"]).await,
        format!("{anon}\ncache\n")
    );
    let filters = h.fake.0.lock().unwrap().volumes.last_filters.clone();
    assert_eq!(
        filters,
        [v1::VolumeFilter {
            key: "dangling".into(),
            value: "true".into()
        }]
    );
    let json = h.ok(&["volume", "ls", "--format", "json"]).await;
    let first: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(first["Driver"], "local");
    assert_eq!(first["Name"], anon);
}

#[tokio::test]
async fn inspect_has_dockers_shape_and_reports_missing_ones() {
    let h = Harness::start().await;
    seed(&h);
    let out = h.ok(&["volume", "inspect", "data"]).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["Name"], "data");
    assert_eq!(v[0]["Driver"], "local");
    assert_eq!(v[0]["Scope"], "local");
    assert_eq!(v[0]["Mountpoint"], "/var/lib/shoal/volumes/data/_data");
    assert_eq!(v[0]["CreatedAt"], "2023-11-14T22:13:20Z");
    let outcome = h
        .run_io(&["volume", "inspect", "data", "nope"], b"", false, false)
        .await;
    assert_eq!(outcome.error(), "no such volume: nope");
    let v: serde_json::Value = serde_json::from_str(&outcome.out()).unwrap();
    assert_eq!(
        v.as_array().unwrap().len(),
        1,
        "the found one is still shown"
    );
}

#[tokio::test]
async fn rm_prints_names_and_refuses_volumes_in_use() {
    let h = Harness::start().await;
    seed(&h);
    assert_eq!(h.ok(&["volume", "rm", "cache"]).await, "cache\n");
    let outcome = h.run_io(&["volume", "rm", "data"], b"", false, false).await;
    assert_eq!(outcome.error(), "remove data: volume is in use - [c1]");
    let outcome = h.run_io(&["volume", "rm", "gone"], b"", false, false).await;
    assert_eq!(outcome.error(), "no such volume: gone");
    assert_eq!(h.ok(&["volume", "rm", "-f", "gone"]).await, "gone\n");
}

#[tokio::test]
async fn prune_asks_first_and_reports_what_went() {
    let h = Harness::start().await;
    seed(&h);
    let outcome = h.run_io(&["volume", "prune"], b"n\n", false, false).await;
    assert!(matches!(outcome.result, Ok(0)));
    assert_eq!(
        outcome.out(),
        "WARNING! This will remove anonymous local volumes not used by at least one container.\nAre you sure you want to continue? [y/N] "
    );
    assert!(!h.fake.calls().contains(&"PruneVolumes"));
    let outcome = h.run_io(&["volume", "prune"], b"y\n", false, false).await;
    assert!(
        outcome.out().ends_with(&format!(
            "Deleted Volumes:\n{}\n\nTotal reclaimed space: 1.2kB\n",
            "a".repeat(64)
        )),
        "{}",
        outcome.out()
    );
    assert_eq!(
        h.ok(&["volume", "prune", "-a", "-f"]).await,
        "Deleted Volumes:\ncache\n\nTotal reclaimed space: 1.2kB\n"
    );
    assert_eq!(h.fake.0.lock().unwrap().volumes.pruned_all, Some(true));
}
