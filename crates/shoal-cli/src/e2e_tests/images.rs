//! The fake daemon's image service, and the image verbs driven against it: listing, removal,
//! inspect, tags, history, and tarballs streamed both ways.

use std::time::{Duration, SystemTime};

use prost_types::Timestamp;
use shoal_api::v1::{self, ImageSummary, images_server::Images, import_chunk};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::{Fake, Harness};
use crate::commands::image::CHUNK_SIZE;

/// The images the fake holds, and what the verbs sent it.
#[derive(Default)]
pub(super) struct Store {
    pub(super) images: Vec<ImageSummary>,
    pub(super) loaded_chunks: Vec<Vec<u8>>,
    pub(super) imported: Option<(v1::ImportSpec, Vec<u8>)>,
    pub(super) save_data: Vec<u8>,
    pub(super) saved: Vec<String>,
    /// Pull and push requests, in order.
    pub(super) transfers: Vec<(&'static str, String, Option<v1::RegistryAuth>)>,
}

const ALPINE: &str = "sha256:7e01a0d0a1dcd9e539f8e9bbd80106d59efbdf97293b3d38f5d7a34501526cdb";
const NGINX: &str = "sha256:a8758716bb6aa4d90071160d27028fe4eaee7ce8166221a97d30440c8eac2be6";
const DANGLING: &str = "sha256:f00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeed";

fn ago(secs: u64) -> Option<Timestamp> {
    Some(Timestamp::from(
        SystemTime::now() - Duration::from_secs(secs),
    ))
}

fn sample_images() -> Vec<ImageSummary> {
    vec![
        ImageSummary {
            id: ALPINE.into(),
            repo_tags: vec!["alpine:3.19".into(), "alpine:latest".into()],
            repo_digests: vec!["alpine@sha256:c5b1261d".into()],
            created: ago(14 * 86400),
            size: 7_376_000,
        },
        ImageSummary {
            id: NGINX.into(),
            repo_tags: vec!["nginx:1.25".into()],
            repo_digests: vec![],
            created: ago(3 * 86400),
            size: 187_000_000,
        },
        ImageSummary {
            id: DANGLING.into(),
            repo_tags: vec![],
            repo_digests: vec![],
            created: ago(5 * 3600),
            size: 999,
        },
    ]
}

impl Store {
    fn find(&self, reference: &str) -> Result<usize, Status> {
        let with_tag = if reference.contains(':') || reference.contains('@') {
            reference.to_owned()
        } else {
            format!("{reference}:latest")
        };
        self.images
            .iter()
            .position(|i| {
                i.repo_tags.contains(&with_tag)
                    || i.id == reference
                    || i.id
                        .strip_prefix("sha256:")
                        .is_some_and(|id| reference.len() >= 4 && id.starts_with(reference))
            })
            .ok_or_else(|| Status::not_found(format!("No such image: {reference}")))
    }
}

impl Fake {
    fn store<T>(&self, call: &'static str, f: impl FnOnce(&mut Store) -> T) -> T {
        self.with(call, |s| f(&mut s.images))
    }
}

type BoxStream<T> = std::pin::Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Images for Fake {
    async fn list(
        &self,
        _: Request<v1::ListImagesRequest>,
    ) -> Result<Response<v1::ListImagesResponse>, Status> {
        self.store("ListImages", |s| {
            Ok(Response::new(v1::ListImagesResponse {
                images: s.images.clone(),
            }))
        })
    }

    async fn inspect(&self, req: Request<v1::ImageRef>) -> Result<Response<v1::ImageInfo>, Status> {
        self.store("InspectImage", |s| {
            let i = s.find(&req.into_inner().image)?;
            Ok(Response::new(v1::ImageInfo {
                summary: Some(s.images[i].clone()),
                architecture: "amd64".into(),
                os: "linux".into(),
                config_json: br#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/bin:/bin"],"Cmd":["/bin/sh"]},"rootfs":{"type":"layers"}}"#.to_vec(),
                layers: vec!["sha256:4abcf2066143".into()],
            }))
        })
    }

    async fn history(
        &self,
        req: Request<v1::ImageRef>,
    ) -> Result<Response<v1::ImageHistoryResponse>, Status> {
        self.store("History", |s| {
            let i = s.find(&req.into_inner().image)?;
            Ok(Response::new(v1::ImageHistoryResponse {
                entries: vec![
                    v1::HistoryEntry {
                        id: s.images[i].id.clone(),
                        created: ago(14 * 86400),
                        created_by: "/bin/sh -c #(nop)  CMD [\"/bin/sh\"]".into(),
                        size: 0,
                        comment: String::new(),
                        empty_layer: true,
                    },
                    v1::HistoryEntry {
                        id: "<missing>".into(),
                        created: ago(14 * 86400),
                        created_by: "/bin/sh -c #(nop) ADD file:37a76ec18f9887751cd8473744917d08b7431fc4085097bb6a09d81b41775473 in / ".into(),
                        size: 7_376_000,
                        comment: String::new(),
                        empty_layer: false,
                    },
                ],
            }))
        })
    }

    async fn tag(
        &self,
        req: Request<v1::TagImageRequest>,
    ) -> Result<Response<v1::TagImageResponse>, Status> {
        self.store("Tag", |s| {
            let req = req.into_inner();
            let i = s.find(&req.source)?;
            s.images[i].repo_tags.push(req.target);
            Ok(Response::new(v1::TagImageResponse {}))
        })
    }

    async fn remove(
        &self,
        req: Request<v1::RemoveImageRequest>,
    ) -> Result<Response<v1::RemoveImageResponse>, Status> {
        self.store("RemoveImage", |s| {
            let req = req.into_inner();
            let i = s.find(&req.image)?;
            let image = &mut s.images[i];
            let tag = image
                .repo_tags
                .iter()
                .position(|t| *t == req.image || *t == format!("{}:latest", req.image));
            let mut removed = Vec::new();
            match tag {
                Some(t) if image.repo_tags.len() > 1 => {
                    removed.push(v1::RemovedImage {
                        untagged: image.repo_tags.remove(t),
                        deleted: String::new(),
                    });
                }
                _ if image.repo_tags.len() > 1 && !req.force => {
                    return Err(Status::failed_precondition(format!(
                        "unable to delete {} (must be forced) - image is referenced in multiple repositories",
                        req.image
                    )));
                }
                _ => {
                    let image = s.images.remove(i);
                    for tag in image.repo_tags {
                        removed.push(v1::RemovedImage {
                            untagged: tag,
                            deleted: String::new(),
                        });
                    }
                    removed.push(v1::RemovedImage {
                        untagged: String::new(),
                        deleted: image.id,
                    });
                }
            }
            Ok(Response::new(v1::RemoveImageResponse { removed }))
        })
    }

    async fn load(
        &self,
        req: Request<Streaming<v1::DataChunk>>,
    ) -> Result<Response<v1::LoadImagesResponse>, Status> {
        let mut stream = req.into_inner();
        let mut chunks = Vec::new();
        while let Some(chunk) = stream.message().await? {
            chunks.push(chunk.data);
        }
        self.store("Load", |s| {
            s.loaded_chunks = chunks;
            Ok(Response::new(v1::LoadImagesResponse {
                loaded: vec![
                    ImageSummary {
                        id: NGINX.into(),
                        repo_tags: vec!["nginx:1.25".into(), "nginx:latest".into()],
                        ..Default::default()
                    },
                    ImageSummary {
                        id: DANGLING.into(),
                        ..Default::default()
                    },
                ],
            }))
        })
    }

    type SaveStream = BoxStream<v1::DataChunk>;

    async fn save(
        &self,
        req: Request<v1::SaveImagesRequest>,
    ) -> Result<Response<Self::SaveStream>, Status> {
        let (data, ghost) = self.store("Save", |s| {
            let images = req.into_inner().images;
            let ghost = images.iter().any(|i| i == "ghost");
            s.saved = images;
            (s.save_data.clone(), ghost)
        });
        let mut items: Vec<Result<v1::DataChunk, Status>> = data
            .chunks(1000)
            .map(|c| Ok(v1::DataChunk { data: c.to_vec() }))
            .collect();
        if ghost {
            items.truncate(1);
            items.push(Err(Status::not_found("No such image: ghost")));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn import(
        &self,
        req: Request<Streaming<v1::ImportChunk>>,
    ) -> Result<Response<ImageSummary>, Status> {
        let mut stream = req.into_inner();
        let Some(import_chunk::Part::Spec(spec)) = stream.message().await?.and_then(|c| c.part)
        else {
            return Err(Status::invalid_argument(
                "the first message must carry the spec",
            ));
        };
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await? {
            match chunk.part {
                Some(import_chunk::Part::Data(bytes)) => data.extend(bytes),
                _ => return Err(Status::invalid_argument("a second spec")),
            }
        }
        self.store("Import", |s| {
            s.imported = Some((spec, data));
            Ok(Response::new(ImageSummary {
                id: "sha256:1mp0r7ed".into(),
                ..Default::default()
            }))
        })
    }

    type PullStream = BoxStream<v1::ImageProgress>;

    async fn pull(
        &self,
        req: Request<v1::PullImageRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let req = req.into_inner();
        self.store("Pull", |s| {
            s.transfers
                .push(("Pull", req.image.clone(), req.auth.clone()))
        });
        if req.image.contains("ghost") {
            return Err(Status::not_found(
                "image not found: manifest for ghost:latest unknown to the registry",
            ));
        }
        let line = |id: &str, status: &str, current, total| {
            Ok(v1::ImageProgress {
                id: id.into(),
                status: status.into(),
                current,
                total,
                ..Default::default()
            })
        };
        let mut items = vec![
            line("latest", "Pulling from library/busybox", 0, 0),
            line("9ad63333ebc9", "Pulling fs layer", 0, 0),
            line("9ad63333ebc9", "Downloading", 1_000_000, 2_000_000),
            line("9ad63333ebc9", "Verifying Checksum", 0, 0),
            line("9ad63333ebc9", "Download complete", 0, 0),
            line("9ad63333ebc9", "Pull complete", 0, 0),
        ];
        if req.image.contains("broken") {
            items.push(Err(Status::failed_precondition(
                "digest mismatch for blob: expected sha256:aa, got sha256:bb",
            )));
        } else {
            items.push(Ok(v1::ImageProgress {
                pulled: Some(v1::PulledImage {
                    reference: "docker.io/library/busybox:latest".into(),
                    digest: "sha256:d1d1".into(),
                    image_id: "sha256:1d1d".into(),
                    downloaded_newer: !req.image.contains("1.36"),
                    familiar: "busybox:latest".into(),
                }),
                ..Default::default()
            }));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    type PushStream = BoxStream<v1::ImageProgress>;

    async fn push(
        &self,
        req: Request<v1::PushImageRequest>,
    ) -> Result<Response<Self::PushStream>, Status> {
        let req = req.into_inner();
        self.store("Push", |s| {
            s.transfers
                .push(("Push", req.image.clone(), req.auth.clone()))
        });
        let line = |id: &str, status: &str| {
            Ok(v1::ImageProgress {
                id: id.into(),
                status: status.into(),
                ..Default::default()
            })
        };
        let items = vec![
            line("", "The push refers to repository [localhost:5000/app]"),
            line("9ad63333ebc9", "Preparing"),
            line("9ad63333ebc9", "Pushed"),
            Ok(v1::ImageProgress {
                pushed: Some(v1::PushedImage {
                    tag: "1".into(),
                    digest: "sha256:d1d1".into(),
                    size: 527,
                }),
                ..Default::default()
            }),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn login(
        &self,
        req: Request<v1::RegistryLoginRequest>,
    ) -> Result<Response<v1::RegistryLoginResponse>, Status> {
        let req = req.into_inner();
        if req.password != "secret" {
            return Err(Status::unauthenticated(format!(
                "unauthorized: incorrect username or password for {}",
                req.server
            )));
        }
        Ok(Response::new(v1::RegistryLoginResponse {
            status: "Login Succeeded".into(),
        }))
    }

    async fn prune(
        &self,
        _: Request<v1::PruneImagesRequest>,
    ) -> Result<Response<v1::PruneImagesResponse>, Status> {
        self.store("Prune", |s| {
            s.images.retain(|i| !i.repo_tags.is_empty());
            Ok(Response::new(v1::PruneImagesResponse {
                deleted: vec![DANGLING.into()],
                reclaimed_bytes: 4_260_000,
            }))
        })
    }
}

// Tests -------------------------------------------------------------------------------------

fn with_images(h: &Harness) {
    h.fake.0.lock().unwrap().images.images = sample_images();
}

/// Bytes that differ at every offset a chunk boundary could fall on.
fn tarball(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn image_ls_table_sizes_and_quiet() {
    let h = Harness::start().await;
    with_images(&h);
    assert_eq!(
        h.ok(&["image", "ls"]).await,
        "\
REPOSITORY   TAG       IMAGE ID       CREATED       SIZE
<none>       <none>    f00dfeedf00d   5 hours ago   999B
nginx        1.25      a8758716bb6a   3 days ago    187MB
alpine       3.19      7e01a0d0a1dc   2 weeks ago   7.38MB
alpine       latest    7e01a0d0a1dc   2 weeks ago   7.38MB
"
    );
    assert_eq!(h.ok(&["images"]).await, h.ok(&["image", "list"]).await);
    assert_eq!(
        h.ok(&["images", "-q"]).await,
        "f00dfeedf00d\na8758716bb6a\n7e01a0d0a1dc\n"
    );
    assert_eq!(
        h.ok(&["images", "-q", "alpine:3.19"]).await,
        "7e01a0d0a1dc\n"
    );
    let full = h.ok(&["image", "ls", "-q", "--no-trunc", "nginx"]).await;
    assert_eq!(full, format!("{NGINX}\n"));
    let json = h.ok(&["images", "--format", "json", "alpine"]).await;
    let rows: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["Tag"], "latest");
    assert_eq!(rows[1]["Size"], "7.38MB");
    assert_eq!(rows[1]["Digest"], "sha256:c5b1261d");
}

#[tokio::test]
async fn image_rm_tag_inspect_history() {
    let h = Harness::start().await;
    with_images(&h);
    assert_eq!(h.ok(&["tag", "nginx:1.25", "web:v1"]).await, "");
    assert_eq!(h.ok(&["image", "tag", "alpine", "base"]).await, "");
    assert!(h.ok(&["images"]).await.contains("\nweb          v1 "));

    let (out, result) = h.run(&["rmi", "alpine:3.19", "ghost", "nginx:1.25"]).await;
    assert_eq!(out, "Untagged: alpine:3.19\nUntagged: nginx:1.25\n");
    assert_eq!(result.unwrap_err().to_string(), "No such image: ghost");
    assert_eq!(
        h.ok(&["image", "rm", "-f", "web:v1"]).await,
        format!("Untagged: web:v1\nDeleted: {NGINX}\n")
    );

    let (out, result) = h.run(&["image", "inspect", "alpine", "nope"]).await;
    assert_eq!(result.unwrap_err().to_string(), "No such image: nope");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let image = &v[0];
    assert_eq!(image["Id"], ALPINE);
    assert_eq!(image["RepoTags"][0], "alpine:latest");
    assert_eq!(image["RepoDigests"][0], "alpine@sha256:c5b1261d");
    assert_eq!(image["Size"], 7_376_000);
    assert_eq!(image["Architecture"], "amd64");
    assert_eq!(image["Os"], "linux");
    assert_eq!(image["Config"]["Cmd"][0], "/bin/sh");
    assert_eq!(image["RootFS"]["Layers"][0], "sha256:4abcf2066143");
    assert!(image["Created"].as_str().unwrap().ends_with('Z'));

    let history = h.ok(&["history", "alpine"]).await;
    assert_eq!(
        history,
        "\
IMAGE          CREATED       CREATED BY                                      SIZE      COMMENT
7e01a0d0a1dc   2 weeks ago   /bin/sh -c #(nop)  CMD [\"/bin/sh\"]              0B
<missing>      2 weeks ago   /bin/sh -c #(nop) ADD file:37a76ec18f9887751…   7.38MB
"
    );
    assert_eq!(
        h.ok(&["image", "history", "-q", "alpine"]).await,
        "7e01a0d0a1dc\n<missing>\n"
    );
}

#[tokio::test]
async fn load_streams_a_file_in_order() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("images.tar");
    let data = tarball(2 * CHUNK_SIZE + CHUNK_SIZE / 2);
    std::fs::write(&path, &data).unwrap();
    let out = h.ok(&["load", "-i", path.to_str().unwrap()]).await;
    assert_eq!(
        out,
        format!(
            "Loaded image: nginx:1.25\nLoaded image: nginx:latest\nLoaded image ID: {DANGLING}\n"
        )
    );
    let chunks = h.fake.0.lock().unwrap().images.loaded_chunks.clone();
    let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
    assert_eq!(sizes, [CHUNK_SIZE, CHUNK_SIZE, CHUNK_SIZE / 2]);
    assert_eq!(chunks.concat(), data);

    let missing = dir.path().join("missing.tar");
    let (_, result) = h
        .run(&["image", "load", "-i", missing.to_str().unwrap()])
        .await;
    assert_eq!(
        result.unwrap_err().to_string(),
        format!(
            "cannot read {}: no such file or directory",
            missing.display()
        )
    );
}

#[tokio::test]
async fn load_streams_stdin() {
    let h = Harness::start().await;
    let data = tarball(CHUNK_SIZE + 7);
    let outcome = h
        .run_io(&["image", "load", "-q"], &data, false, false)
        .await;
    assert!(outcome.result.is_ok());
    let chunks = h.fake.0.lock().unwrap().images.loaded_chunks.clone();
    assert_eq!(
        chunks.iter().map(Vec::len).collect::<Vec<_>>(),
        [CHUNK_SIZE, 7]
    );
    assert_eq!(chunks.concat(), data);
    // Nothing piped in: refuse, as Docker does, rather than wait on the terminal.
    let outcome = h.run_io(&["load"], b"", true, false).await;
    assert!(
        outcome
            .error()
            .starts_with("requested load from stdin, but stdin is empty")
    );
}

#[tokio::test]
async fn a_failed_read_aborts_the_upload() {
    /// `left` bytes, then an error.
    struct Broken(usize);
    impl std::io::Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("Disk on fire"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(7);
            self.0 -= n;
            Ok(n)
        }
    }
    let h = Harness::start().await;
    let input = crate::stdio::Input::Reader(Some(Box::new(Broken(CHUNK_SIZE + 10))));
    let outcome = h.run_input(&["load"], input, false, false).await;
    assert_eq!(outcome.error(), "cannot read standard input: disk on fire");
    // The daemon never saw the upload end, so it loaded nothing.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!h.fake.calls().contains(&"Load"), "{:?}", h.fake.calls());
}

#[tokio::test]
async fn save_to_a_file_or_stdout() {
    let h = Harness::start().await;
    let data = tarball(3500);
    h.fake.0.lock().unwrap().images.save_data = data.clone();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.tar");
    assert_eq!(
        h.ok(&["save", "-o", path.to_str().unwrap(), "alpine", "nginx:1.25"])
            .await,
        ""
    );
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert_eq!(
        h.fake.0.lock().unwrap().images.saved,
        ["alpine", "nginx:1.25"]
    );
    // A failed save leaves neither the target nor a partial file.
    let failed = dir.path().join("failed.tar");
    let (_, result) = h
        .run(&["image", "save", "-o", failed.to_str().unwrap(), "ghost"])
        .await;
    assert_eq!(result.unwrap_err().to_string(), "No such image: ghost");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["out.tar"]);

    let outcome = h.run_io(&["save", "alpine"], b"", false, false).await;
    assert_eq!(outcome.out, data);
    let calls_before = h.fake.calls().len();
    let outcome = h.run_io(&["save", "alpine"], b"", false, true).await;
    assert_eq!(
        outcome.error(),
        "cowardly refusing to save to a terminal. Use the -o flag or redirect"
    );
    assert_eq!(h.fake.calls().len(), calls_before, "nothing was sent");
}

#[tokio::test]
async fn import_with_changes() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rootfs.tar");
    let data = tarball(CHUNK_SIZE + 1);
    std::fs::write(&path, &data).unwrap();
    let out = h
        .ok(&[
            "import",
            "-c",
            "CMD [\"/bin/sh\"]",
            "--change",
            "ENV DEBUG=1",
            "-m",
            "from a tarball",
            path.to_str().unwrap(),
            "base:1",
        ])
        .await;
    assert_eq!(out, "sha256:1mp0r7ed\n");
    let (spec, received) = h.fake.0.lock().unwrap().images.imported.clone().unwrap();
    assert_eq!(spec.reference, "base:1");
    assert_eq!(spec.changes, ["CMD [\"/bin/sh\"]", "ENV DEBUG=1"]);
    assert_eq!(spec.message, "from a tarball");
    assert_eq!(received, data);

    let outcome = h
        .run_io(&["image", "import", "-"], b"rootfs", false, false)
        .await;
    assert_eq!(outcome.out(), "sha256:1mp0r7ed\n");
    let (spec, received) = h.fake.0.lock().unwrap().images.imported.clone().unwrap();
    assert_eq!(
        (spec.reference.as_str(), received.as_slice()),
        ("", &b"rootfs"[..])
    );

    let (_, result) = h.run(&["import", "https://example.com/rootfs.tar"]).await;
    assert!(
        result
            .unwrap_err()
            .to_string()
            .contains("only a file or - (STDIN)")
    );
}

#[tokio::test]
async fn prune_asks_first() {
    let h = Harness::start().await;
    with_images(&h);
    let outcome = h.run_io(&["image", "prune"], b"n\n", false, false).await;
    assert_eq!(
        outcome.out(),
        "WARNING! This will remove all dangling images.\nAre you sure you want to continue? [y/N] "
    );
    assert!(!h.fake.calls().contains(&"Prune"));
    let outcome = h.run_io(&["image", "prune"], b"y\n", false, false).await;
    assert!(outcome.out().ends_with(&format!(
        "[y/N] Deleted Images:\ndeleted: {DANGLING}\n\nTotal reclaimed space: 4.26MB\n"
    )));
    assert_eq!(
        h.ok(&["image", "prune", "-f"]).await,
        format!("Deleted Images:\ndeleted: {DANGLING}\n\nTotal reclaimed space: 4.26MB\n")
    );
}

#[tokio::test]
async fn pull_and_push_print_dockers_lines() {
    let h = Harness::start().await;
    assert_eq!(
        h.ok(&["pull", "busybox"]).await,
        "\
Using default tag: latest
latest: Pulling from library/busybox
9ad63333ebc9: Pulling fs layer
9ad63333ebc9: Verifying Checksum
9ad63333ebc9: Download complete
9ad63333ebc9: Pull complete
Digest: sha256:d1d1
Status: Downloaded newer image for busybox:latest
docker.io/library/busybox:latest
"
    );
    let out = h.ok(&["image", "pull", "busybox:1.36"]).await;
    assert!(out.starts_with("latest: Pulling from"), "{out}");
    assert!(
        out.contains("Status: Image is up to date for busybox:latest\n"),
        "{out}"
    );
    assert_eq!(
        h.ok(&["pull", "-q", "busybox"]).await,
        "docker.io/library/busybox:latest\n"
    );
    // On a terminal the layer line is redrawn with a bar.
    let outcome = h.run_io(&["pull", "busybox:1"], b"", false, true).await;
    assert!(
        outcome
            .out()
            .contains("\x1b[1A\r\x1b[2K9ad63333ebc9: Downloading [="),
        "{:?}",
        outcome.out()
    );

    let (_, result) = h.run(&["pull", "ghost"]).await;
    assert_eq!(
        result.unwrap_err().to_string(),
        "image not found: manifest for ghost:latest unknown to the registry"
    );
    let (out, result) = h.run(&["pull", "broken:1"]).await;
    assert!(out.ends_with("Pull complete\n"), "{out}");
    assert_eq!(
        result.unwrap_err().to_string(),
        "digest mismatch for blob: expected sha256:aa, got sha256:bb"
    );

    assert_eq!(
        h.ok(&["push", "localhost:5000/app:1"]).await,
        "\
The push refers to repository [localhost:5000/app]
9ad63333ebc9: Preparing
9ad63333ebc9: Pushed
1: digest: sha256:d1d1 size: 527
"
    );
    assert_eq!(
        h.ok(&["image", "push", "-q", "localhost:5000/app"]).await,
        "localhost:5000/app:latest\n"
    );
    let transfers = h.fake.0.lock().unwrap().images.transfers.clone();
    let names: Vec<(&str, &str)> = transfers
        .iter()
        .map(|(op, image, _)| (*op, image.as_str()))
        .collect();
    assert_eq!(names[0], ("Pull", "busybox"));
    assert_eq!(names[names.len() - 1], ("Push", "localhost:5000/app"));
}

#[tokio::test]
async fn login_needs_credentials_without_a_terminal() {
    let h = Harness::start().await;
    let (_, result) = h.run(&["login", "localhost:5000"]).await;
    assert_eq!(
        result.unwrap_err().to_string(),
        "cannot perform an interactive login from a non TTY device: use -u and --password-stdin"
    );
    let (_, result) = h
        .run(&["login", "--password-stdin", "localhost:5000"])
        .await;
    assert_eq!(
        result.unwrap_err().to_string(),
        "must provide --username with --password-stdin"
    );
    let outcome = h
        .run_io(
            &["login", "-u", "me", "--password-stdin", "localhost:5000"],
            b"\n",
            false,
            false,
        )
        .await;
    assert_eq!(outcome.error(), "password is empty");
    assert!(h.fake.calls().is_empty(), "nothing reached the daemon");
}
