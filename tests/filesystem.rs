//! End-to-end tests of container filesystems — `diff`, `export`, `commit`, `cp` — on real
//! containers from the busybox test image, including a hostile container whose symlinks try
//! to make `cp` read or write the host.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use shoal_testkit::Daemon;
use shoal_testkit::fixtures::{can_run_containers, daemon_with_busybox, wait_for};

/// Runs the CLI with raw bytes in and out (tar streams are not text).
fn cli_bytes(daemon: &Daemon, args: &[&str], stdin: &[u8]) -> (i32, Vec<u8>, String) {
    let mut child = Command::new(shoal_testkit::shoal_binary())
        .arg("-H")
        .arg(daemon.host())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shoal CLI");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let output = child.wait_with_output().expect("wait for shoal CLI");
    let _ = writer.join();
    (
        output.status.code().unwrap_or(-1),
        output.stdout,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Entry names and file contents of a tar.
fn tar_files(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(bytes);
    for entry in archive.entries().expect("a tar") {
        let mut entry = entry.expect("a tar entry");
        let name = entry
            .path()
            .expect("a name")
            .display()
            .to_string()
            .trim_end_matches('/')
            .to_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("entry data");
        out.push((name, data));
    }
    out
}

fn tar_of(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, data, link) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        {
            // Raw names: tar::Builder would refuse the hostile ones.
            let old = header.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_cksum();
        builder.append(&header, *data).expect("append");
    }
    builder.into_inner().expect("finish tar")
}

fn no_leftover_views(daemon: &Daemon) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let exec = daemon.dir().join("exec").join("fsviews");
    assert!(
        !mounts.contains(exec.to_str().unwrap()),
        "a filesystem view is still mounted:\n{mounts}"
    );
}

#[test]
fn diff_export_and_commit_of_a_stopped_container() {
    if !can_run_containers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_with_busybox(dir.path());
    daemon
        .cli(&[
            "run",
            "--name",
            "work",
            "busybox:test",
            "sh",
            "-c",
            "echo hello > /tmp/written; rm /etc/group; mkdir -p /srv/app; echo x > /srv/app/f",
        ])
        .ok();

    let diff = daemon.cli(&["diff", "work"]).ok().to_owned();
    let lines: Vec<&str> = diff.lines().collect();
    for want in [
        "C /etc",
        "D /etc/group",
        "A /srv",
        "A /srv/app",
        "A /srv/app/f",
        "C /tmp",
        "A /tmp/written",
    ] {
        assert!(lines.contains(&want), "{want} missing from:\n{diff}");
    }
    let mut sorted = lines.clone();
    sorted.sort_by(|a, b| Path::new(&a[2..]).cmp(Path::new(&b[2..])));
    assert_eq!(lines, sorted, "sorted by path like docker diff");

    // export: the merged filesystem, to a pipe or a file.
    let (code, tar, stderr) = cli_bytes(&daemon, &["export", "work"], b"");
    assert_eq!(code, 0, "{stderr}");
    let files = tar_files(&tar);
    let find = |name: &str| {
        files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.clone())
    };
    assert_eq!(find("tmp/written").as_deref(), Some(&b"hello\n"[..]));
    assert!(
        find("etc/group").is_none(),
        "deleted files are not exported"
    );
    assert!(find("etc/passwd").is_some() && find("bin/busybox").is_some());
    let out = dir.path().join("work.tar");
    daemon
        .cli(&["container", "export", "-o", out.to_str().unwrap(), "work"])
        .ok();
    assert_eq!(std::fs::read(&out).unwrap().len(), tar.len());
    no_leftover_views(&daemon);

    // commit, then run the new image: the write is there, the deletion stays.
    let id = daemon
        .cli(&[
            "commit",
            "-m",
            "snapshot",
            "-a",
            "tester",
            "-c",
            "CMD [\"cat\", \"/tmp/written\"]",
            "work",
            "snap:1",
        ])
        .ok()
        .trim()
        .to_owned();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    assert_eq!(daemon.cli(&["run", "--rm", "snap:1"]).ok(), "hello\n");
    assert_eq!(
        daemon
            .cli(&[
                "run",
                "--rm",
                "snap:1",
                "sh",
                "-c",
                "cat /srv/app/f; cat /etc/group 2>/dev/null || echo group-gone"
            ])
            .ok(),
        "x\ngroup-gone\n"
    );
    let history = daemon.cli(&["history", "snap:1"]).ok().to_owned();
    assert!(history.contains("snapshot"), "{history}");
    let inspect: serde_json::Value =
        serde_json::from_str(daemon.cli(&["image", "inspect", "snap:1"]).ok()).unwrap();
    assert_eq!(inspect[0]["RootFS"]["Layers"].as_array().unwrap().len(), 2);
    // Docker keeps the container's command as the new image's CMD unless changed.
    daemon.cli(&["commit", "work", "snap:2"]).ok();
    let inspect: serde_json::Value =
        serde_json::from_str(daemon.cli(&["image", "inspect", "snap:2"]).ok()).unwrap();
    assert_eq!(inspect[0]["Config"]["Cmd"][0], "sh");
    assert!(
        inspect[0]["Config"]["Cmd"][2]
            .as_str()
            .unwrap()
            .contains("/tmp/written")
    );

    let line = daemon.cli(&["diff", "nope"]).one_line_error().to_owned();
    assert!(line.contains("no such container"), "{line}");
    let line = daemon
        .cli(&["commit", "work", "Not/A:Valid:Ref"])
        .one_line_error()
        .to_owned();
    assert!(line.contains("invalid reference"), "{line}");
}

#[test]
fn commit_of_a_running_container_pauses_it_and_lets_it_run_on() {
    if !can_run_containers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_with_busybox(dir.path());
    daemon
        .cli(&[
            "run",
            "-d",
            "--name",
            "live",
            "busybox:test",
            "sh",
            "-c",
            "echo live > /state; while true; do sleep 0.1; done",
        ])
        .ok();
    wait_for("the container's write", Duration::from_secs(10), || {
        daemon.cli(&["diff", "live"]).stdout.contains("A /state")
    });
    daemon.cli(&["commit", "live", "live:1"]).ok();
    daemon
        .cli(&["commit", "--pause=false", "live", "live:2"])
        .ok();
    let inspect: serde_json::Value =
        serde_json::from_str(daemon.cli(&["inspect", "live"]).ok()).unwrap();
    assert_eq!(inspect[0]["State"]["Status"], "running");
    for image in ["live:1", "live:2"] {
        assert_eq!(
            daemon.cli(&["run", "--rm", image, "cat", "/state"]).ok(),
            "live\n"
        );
    }
    daemon.cli(&["rm", "-f", "live"]).ok();
}

#[test]
fn cp_both_ways_on_running_and_stopped_containers() {
    if !can_run_containers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_with_busybox(dir.path());
    let host = dir.path().join("host");
    std::fs::create_dir_all(host.join("tree/inner")).unwrap();
    std::fs::write(host.join("file.txt"), b"from the host\n").unwrap();
    std::fs::write(host.join("tree/inner/x"), b"x\n").unwrap();
    let at = |p: &str| host.join(p).display().to_string();
    daemon
        .cli(&[
            "run",
            "-d",
            "--name",
            "web",
            "busybox:test",
            "sh",
            "-c",
            "mkdir -p /data/sub; echo one > /data/sub/f; ln -s /data/sub/f /data/link; \
             while true; do sleep 0.1; done",
        ])
        .ok();
    wait_for("the container's files", Duration::from_secs(10), || {
        daemon.cli(&["diff", "web"]).stdout.contains("A /data/link")
    });

    // Out of the running container.
    let out = daemon.cli(&["cp", "web:/data/sub/f", &at("f.out")]);
    out.ok();
    assert!(out.stderr.starts_with("Successfully copied"), "{out:?}");
    assert_eq!(std::fs::read(at("f.out")).unwrap(), b"one\n");
    daemon.cli(&["cp", "web:/data", &at("")]).ok();
    assert_eq!(std::fs::read(at("data/sub/f")).unwrap(), b"one\n");
    assert!(
        std::fs::symlink_metadata(at("data/link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    daemon
        .cli(&["cp", "-L", "web:/data/link", &at("followed")])
        .ok();
    assert_eq!(std::fs::read(at("followed")).unwrap(), b"one\n");
    let (code, tar, stderr) = cli_bytes(&daemon, &["cp", "web:/data", "-"], b"");
    assert_eq!(code, 0, "{stderr}");
    let names: Vec<String> = tar_files(&tar).into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"data/sub/f".to_owned()), "{names:?}");

    // Into the running container.
    daemon.cli(&["cp", &at("file.txt"), "web:/tmp/"]).ok();
    daemon.cli(&["cp", &at("tree"), "web:/newtree"]).ok();
    let tar = tar_of(&[("streamed", tar::EntryType::Regular, b"via stdin\n", "")]);
    let (code, _, stderr) = cli_bytes(&daemon, &["cp", "-", "web:/data"], &tar);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        daemon
            .cli(&[
                "exec",
                "web",
                "cat",
                "/tmp/file.txt",
                "/newtree/inner/x",
                "/data/streamed"
            ])
            .ok(),
        "from the host\nx\nvia stdin\n"
    );
    let owner = daemon
        .cli(&["exec", "web", "stat", "-c", "%u:%g", "/tmp/file.txt"])
        .ok()
        .to_owned();
    assert_eq!(
        owner.trim(),
        "0:0",
        "copied files belong to root without -a"
    );

    // A missing path is one line, Docker's words.
    let line = daemon
        .cli(&["cp", "web:/missing", &at("m")])
        .one_line_error()
        .to_owned();
    assert_eq!(
        line,
        "Error: Could not find the file /missing in container web"
    );
    let line = daemon
        .cli(&["cp", "-", "web:/data/sub/f"])
        .one_line_error()
        .to_owned();
    assert!(line.contains("must be a directory"), "{line}");

    // Stopped: a temporary overlay, unmounted afterwards; the container starts again after.
    daemon.cli(&["stop", "-t", "0", "web"]).ok();
    daemon
        .cli(&["cp", &at("file.txt"), "web:/data/while-stopped"])
        .ok();
    daemon
        .cli(&["cp", "web:/data/while-stopped", &at("back")])
        .ok();
    assert_eq!(std::fs::read(at("back")).unwrap(), b"from the host\n");
    daemon.cli(&["cp", "web:/tmp/file.txt", &at("back2")]).ok();
    assert_eq!(std::fs::read(at("back2")).unwrap(), b"from the host\n");
    let line = daemon
        .cli(&["cp", "web:/missing", &at("m")])
        .one_line_error()
        .to_owned();
    assert_eq!(
        line,
        "Error: Could not find the file /missing in container web"
    );
    no_leftover_views(&daemon);
    daemon.cli(&["start", "web"]).ok();
    assert_eq!(
        daemon
            .cli(&["exec", "web", "cat", "/data/while-stopped"])
            .ok(),
        "from the host\n"
    );
    daemon.cli(&["rm", "-f", "web"]).ok();
    no_leftover_views(&daemon);
}

#[test]
fn a_hostile_container_cannot_make_cp_touch_the_host() {
    if !can_run_containers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_with_busybox(dir.path());
    // Host paths the container names in its symlinks; they must stay untouched.
    let host_dir = dir.path().join("host-only");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("secret"), b"host secret\n").unwrap();
    let host_dir_str = host_dir.display().to_string();
    let local = dir.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("payload"), b"payload\n").unwrap();
    let at = |p: &str| local.join(p).display().to_string();
    let script = format!(
        "ln -s / /evil; ln -s ../../../../../../.. /up; ln -s {host_dir_str} /abs-host; \
         ln -s {host_dir_str}/secret /secret-link; while true; do sleep 0.1; done"
    );
    daemon
        .cli(&[
            "run",
            "-d",
            "--name",
            "bad",
            "busybox:test",
            "sh",
            "-c",
            &script,
        ])
        .ok();
    wait_for("the symlinks", Duration::from_secs(10), || {
        daemon
            .cli(&["diff", "bad"])
            .stdout
            .contains("A /secret-link")
    });

    let check = |phase: &str| {
        // Reads: every route to the host file fails or reads the container's own files.
        for path in [
            format!("bad:/evil{host_dir_str}/secret"),
            format!("bad:/up{host_dir_str}/secret"),
            "bad:/abs-host/secret".to_owned(),
        ] {
            let out = daemon.cli(&["cp", &path, &at("stolen")]);
            assert_ne!(out.code, 0, "{phase}: {path} was copied");
            assert!(!local.join("stolen").exists(), "{phase}: {path}");
        }
        let out = daemon.cli(&["cp", "-L", "bad:/secret-link", &at("stolen")]);
        assert_ne!(
            out.code, 0,
            "{phase}: -L followed the link out of the container"
        );
        daemon
            .cli(&["cp", "bad:/secret-link", &at("link-copy")])
            .ok();
        let copied = std::fs::symlink_metadata(at("link-copy")).unwrap();
        assert!(
            copied.file_type().is_symlink(),
            "{phase}: the link itself is copied"
        );
        std::fs::remove_file(at("link-copy")).unwrap();
        let (code, tar, stderr) = cli_bytes(&daemon, &["cp", "bad:/up/etc/passwd", "-"], b"");
        assert_eq!(code, 0, "{phase}: {stderr}");
        let files = tar_files(&tar);
        assert!(
            files[0].1.starts_with(b"root:x:0:0:root:/root:/bin/sh"),
            "{phase}: /up/etc/passwd is the container's"
        );
        let (code, tar, _) = cli_bytes(&daemon, &["cp", "bad:/evil/", "-"], b"");
        assert_eq!(code, 0, "{phase}");
        assert!(
            !tar.windows(b"host secret".len())
                .any(|w| w == b"host secret"),
            "{phase}: the host secret was archived"
        );
    };
    check("running");

    // Writes: through the container's symlinks, into the container or nowhere.
    for dest in [
        "bad:/abs-host/".to_owned(),
        "bad:/abs-host/new".to_owned(),
        format!("bad:/evil{host_dir_str}/"),
        format!("bad:/up{host_dir_str}/new"),
    ] {
        let out = daemon.cli(&["cp", &at("payload"), &dest]);
        assert_ne!(out.code, 0, "{dest} was written: {out:?}");
    }
    daemon.cli(&["cp", &at("payload"), "bad:/evil/tmp/"]).ok();
    assert_eq!(
        daemon.cli(&["exec", "bad", "cat", "/tmp/payload"]).ok(),
        "payload\n"
    );
    // Hostile archives on stdin: `..`, and a symlink planted then written through.
    let escape = format!("escape-{}", std::process::id());
    let hostile = [
        tar_of(&[(
            &format!("../../../../{escape}"),
            tar::EntryType::Regular,
            b"x",
            "",
        )]),
        tar_of(&[
            ("s", tar::EntryType::Symlink, b"", &host_dir_str),
            ("s/pwned", tar::EntryType::Regular, b"x", ""),
        ]),
        tar_of(&[(
            "h",
            tar::EntryType::Link,
            b"",
            &format!("{host_dir_str}/secret"),
        )]),
    ];
    for archive in &hostile {
        let (code, _, _) = cli_bytes(&daemon, &["cp", "-", "bad:/tmp"], archive);
        assert_ne!(code, 0);
    }
    let mut host_entries: Vec<String> = std::fs::read_dir(&host_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    host_entries.sort();
    assert_eq!(host_entries, ["secret"]);
    assert_eq!(
        std::fs::read(host_dir.join("secret")).unwrap(),
        b"host secret\n"
    );
    assert!(!Path::new("/").join(&escape).exists());
    assert!(!dir.path().join(&escape).exists());

    daemon.cli(&["stop", "-t", "0", "bad"]).ok();
    check("stopped");
    let out = daemon.cli(&["cp", &at("payload"), "bad:/abs-host/"]);
    assert_ne!(out.code, 0, "stopped: written through /abs-host");
    assert_eq!(std::fs::read_dir(&host_dir).unwrap().count(), 1);
    daemon.cli(&["rm", "-f", "bad"]).ok();
    no_leftover_views(&daemon);
}
