//! End-to-end tests of volumes: real daemons and containers, busybox images, driven through the
//! real CLI — sharing data through a named volume, read-only mounts, copy-up of image content,
//! anonymous volumes and their removal, in-use refusals, survival of a kill -9, driver options
//! and bind mounts of missing host paths.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use shoal_testkit::Daemon;
use shoal_testkit::fixtures::{can_run_containers, import_busybox};

/// A daemon without a bridge holding `busybox:test`, and `busybox:vol`, whose image config
/// declares `VOLUME /etc`.
fn daemon_with_busybox(dir: &Path) -> Daemon {
    let daemon = shoal_testkit::fixtures::daemon_with_busybox(dir);
    import_busybox(&daemon, dir, "busybox:vol", &["VOLUME /etc"]);
    daemon
}

fn inspect(daemon: &Daemon, args: &[&str]) -> serde_json::Value {
    let out = daemon.cli(args);
    serde_json::from_str(out.ok()).unwrap_or_else(|e| panic!("{args:?}: {e}: {out:?}"))
}

fn volume_names(daemon: &Daemon) -> Vec<String> {
    daemon
        .cli(&["volume", "ls", "-q"])
        .ok()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn anonymous_names(daemon: &Daemon) -> Vec<String> {
    volume_names(daemon)
        .into_iter()
        .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}

#[test]
fn named_volumes_share_data_and_read_only_refuses_writes() {
    if !can_run_containers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_with_busybox(dir.path());

    // First use creates the volume; a second container reads what the first wrote.
    let out = daemon.cli(&[
        "run",
        "--rm",
        "-v",
        "shared:/data",
        "busybox:test",
        "sh",
        "-c",
        "echo written-by-one > /data/note",
    ]);
    out.ok();
    let out = daemon.cli(&[
        "run",
        "--rm",
        "--mount",
        "type=volume,source=shared,target=/mnt/in",
        "busybox:test",
        "cat",
        "/mnt/in/note",
    ]);
    assert_eq!(out.ok(), "written-by-one\n");
    assert_eq!(
        daemon.cli(&["volume", "ls"]).ok(),
        "DRIVER    VOLUME NAME\nlocal     shared\n"
    );
    let data_file = daemon.data_root().join("volumes/shared/_data/note");
    assert_eq!(
        std::fs::read_to_string(&data_file).unwrap(),
        "written-by-one\n"
    );

    // Read-only: the write fails inside the container, as with Docker.
    let out = daemon.cli(&[
        "run",
        "--rm",
        "-v",
        "shared:/data:ro",
        "busybox:test",
        "sh",
        "-c",
        "echo again > /data/note",
    ]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    let out = daemon.cli(&[
        "run",
        "--rm",
        "--mount",
        "type=volume,source=shared,target=/data,readonly",
        "busybox:test",
        "touch",
        "/data/other",
    ]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(&data_file).unwrap(),
        "written-by-one\n"
    );

    // inspect shows the resolved mount, Docker-shaped.
    daemon
        .cli(&[
            "create",
            "--name",
            "viewer",
            "-v",
            "shared:/data:ro",
            "-v",
            "/scratch",
            "busybox:test",
            "true",
        ])
        .ok();
    let view = inspect(&daemon, &["inspect", "viewer"]);
    let mounts = view[0]["Mounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 2, "{mounts:?}");
    assert_eq!(mounts[0]["Type"], "volume");
    assert_eq!(mounts[0]["Name"], "shared");
    assert_eq!(mounts[0]["Destination"], "/data");
    assert_eq!(mounts[0]["RW"], false);
    assert!(
        mounts[0]["Source"]
            .as_str()
            .unwrap()
            .ends_with("/volumes/shared/_data"),
        "{mounts:?}"
    );
    assert_eq!(mounts[1]["Destination"], "/scratch");
    assert_eq!(mounts[1]["Name"].as_str().unwrap().len(), 64);
    assert_eq!(mounts[1]["RW"], true);

    let volume = inspect(&daemon, &["volume", "inspect", "shared"]);
    assert_eq!(volume[0]["Name"], "shared");
    assert_eq!(volume[0]["Driver"], "local");
    assert_eq!(volume[0]["Scope"], "local");
    assert!(volume[0]["CreatedAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        volume[0]["Mountpoint"],
        daemon
            .data_root()
            .join("volumes/shared/_data")
            .display()
            .to_string()
    );
}

#[test]
fn new_volumes_get_the_images_content() {
    if !can_run_containers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_with_busybox(dir.path());

    // /bin holds busybox and a symlink per applet: the container still runs from the copy.
    let out = daemon.cli(&[
        "run",
        "--rm",
        "-v",
        "tools:/bin",
        "busybox:test",
        "cat",
        "/etc/hostname",
    ]);
    assert_eq!(out.ok(), "busybox\n");
    let copied = daemon.data_root().join("volumes/tools/_data");
    assert_eq!(
        std::fs::read_link(copied.join("sh")).unwrap(),
        Path::new("busybox"),
        "symlinks are copied as symlinks"
    );
    let busybox = std::fs::metadata(copied.join("busybox")).unwrap();
    assert_eq!(busybox.permissions().mode() & 0o7777, 0o755);

    // A volume that already has content is not filled again.
    daemon
        .cli(&[
            "run",
            "--rm",
            "-v",
            "conf:/etc",
            "busybox:test",
            "sh",
            "-c",
            "echo changed > /etc/hostname; rm /etc/group",
        ])
        .ok();
    let out = daemon.cli(&[
        "run",
        "--rm",
        "-v",
        "conf:/etc",
        "busybox:test",
        "sh",
        "-c",
        "cat /etc/hostname; test -e /etc/group || echo no-group",
    ]);
    assert_eq!(out.ok(), "changed\nno-group\n");

    // nocopy leaves a new volume empty.
    let out = daemon.cli(&[
        "run",
        "--rm",
        "-v",
        "bare:/etc:nocopy",
        "busybox:test",
        "ls",
        "-A",
        "/etc",
    ]);
    assert_eq!(out.ok(), "");

    // The image's VOLUME gets an anonymous volume with the image's content; --rm removes it.
    let before = anonymous_names(&daemon);
    let out = daemon.cli(&["run", "--rm", "busybox:vol", "cat", "/etc/hostname"]);
    assert_eq!(out.ok(), "busybox\n");
    assert_eq!(anonymous_names(&daemon), before);
}

#[test]
fn anonymous_volumes_go_with_rm_v_and_run_rm_named_ones_stay() {
    if !can_run_containers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_with_busybox(dir.path());

    daemon
        .cli(&[
            "create",
            "--name",
            "both",
            "-v",
            "keep:/keep",
            "-v",
            "/anon",
            "busybox:test",
            "true",
        ])
        .ok();
    let anon = anonymous_names(&daemon);
    assert_eq!(anon.len(), 1, "{anon:?}");
    daemon.cli(&["rm", "-v", "both"]).ok();
    assert_eq!(volume_names(&daemon), ["keep"]);

    // run --rm: the anonymous volume goes, the named one stays.
    let out = daemon.cli(&[
        "run",
        "--rm",
        "-v",
        "/scratch",
        "-v",
        "keep2:/keep",
        "busybox:test",
        "sh",
        "-c",
        "echo x > /scratch/f; echo y > /keep/f",
    ]);
    out.ok();
    assert_eq!(volume_names(&daemon), ["keep", "keep2"]);

    // The image's VOLUME stays after a plain rm, and prune takes it (named ones need -a).
    daemon
        .cli(&["create", "--name", "imaged", "busybox:vol", "true"])
        .ok();
    let view = inspect(&daemon, &["inspect", "imaged"]);
    assert_eq!(view[0]["Mounts"][0]["Destination"], "/etc");
    assert_eq!(view[0]["Mounts"][0]["Type"], "volume");
    let anon = view[0]["Mounts"][0]["Name"].as_str().unwrap().to_owned();
    daemon.cli(&["rm", "imaged"]).ok();
    assert_eq!(anonymous_names(&daemon), std::slice::from_ref(&anon));
    assert_eq!(
        daemon
            .cli(&["volume", "ls", "-q", "-f", "dangling=true"])
            .ok(),
        format!("{anon}\nkeep\nkeep2\n")
    );
    let out = daemon.cli(&["volume", "prune", "-f"]).ok().to_owned();
    assert!(
        out.starts_with(&format!(
            "Deleted Volumes:\n{anon}\n\nTotal reclaimed space: "
        )),
        "{out}"
    );
    assert_eq!(volume_names(&daemon), ["keep", "keep2"]);
    let out = daemon.cli(&["volume", "prune", "-a", "-f"]).ok().to_owned();
    assert!(out.contains("keep\nkeep2\n"), "{out}");
    assert!(volume_names(&daemon).is_empty());
    assert!(
        std::fs::read_dir(daemon.data_root().join("volumes"))
            .unwrap()
            .next()
            .is_none(),
        "nothing is left on disk"
    );
}

#[test]
fn volumes_in_use_are_not_removed_and_survive_a_crash() {
    if !can_run_containers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = daemon_with_busybox(dir.path());

    assert_eq!(
        daemon
            .cli(&["volume", "create", "--label", "tier=db", "persist"])
            .ok(),
        "persist\n"
    );
    daemon
        .cli(&[
            "run",
            "--rm",
            "-v",
            "persist:/data",
            "busybox:test",
            "sh",
            "-c",
            "echo kept > /data/f",
        ])
        .ok();
    let holder = daemon
        .cli(&[
            "create",
            "--name",
            "holder",
            "-v",
            "persist:/data",
            "busybox:test",
            "true",
        ])
        .ok()
        .trim()
        .to_owned();
    // In use by a container that never ran: refused, with the container named.
    let line = daemon
        .cli(&["volume", "rm", "persist"])
        .one_line_error()
        .to_owned();
    assert!(
        line.contains("remove persist: volume is in use") && line.contains(&holder),
        "{line}"
    );
    // And by a running one.
    daemon
        .cli(&[
            "run",
            "-d",
            "--name",
            "runner",
            "-v",
            "busy:/b",
            "busybox:test",
            "sleep",
            "600",
        ])
        .ok();
    let line = daemon
        .cli(&["volume", "rm", "busy"])
        .one_line_error()
        .to_owned();
    assert!(line.contains("volume is in use"), "{line}");

    daemon.restart();

    let volume = inspect(&daemon, &["volume", "inspect", "persist"]);
    assert_eq!(volume[0]["Labels"]["tier"], "db");
    let out = daemon.cli(&[
        "run",
        "--rm",
        "-v",
        "persist:/data",
        "busybox:test",
        "cat",
        "/data/f",
    ]);
    assert_eq!(out.ok(), "kept\n");
    // Which containers use which volumes survived the crash too.
    let line = daemon
        .cli(&["volume", "rm", "persist"])
        .one_line_error()
        .to_owned();
    assert!(line.contains(&holder), "{line}");
    daemon.cli(&["volume", "rm", "busy"]).one_line_error();
    daemon.cli(&["rm", "holder"]).ok();
    assert_eq!(daemon.cli(&["volume", "rm", "persist"]).ok(), "persist\n");
    daemon.cli(&["rm", "-f", "runner"]).ok();
    assert_eq!(daemon.cli(&["volume", "rm", "busy"]).ok(), "busy\n");
    let line = daemon
        .cli(&["volume", "inspect", "persist"])
        .one_line_error()
        .to_owned();
    assert!(line.contains("no such volume: persist"), "{line}");
    daemon.cli(&["volume", "rm", "-f", "persist"]).ok();
}

#[test]
fn bad_names_options_and_bind_sources_are_one_line() {
    if !can_run_containers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_with_busybox(dir.path());

    for (args, want) in [
        (&["volume", "create", "a"][..], "invalid volume name \"a\""),
        (&["volume", "create", "no/slash"], "invalid volume name"),
        (
            &["volume", "create", "-o", "colour=blue", "v1"],
            "invalid volume option \"colour\"",
        ),
        (
            &[
                "volume",
                "create",
                "-o",
                "type=nfs",
                "-o",
                "device=:/x",
                "v2",
            ],
            "unsupported volume type \"nfs\"",
        ),
        (
            &[
                "volume",
                "create",
                "-o",
                "type=tmpfs",
                "-o",
                "o=size=lots",
                "v3",
            ],
            "invalid tmpfs volume option",
        ),
        (
            &[
                "volume",
                "create",
                "-o",
                "type=none",
                "-o",
                "o=bind",
                "-o",
                "device=/does/not/exist",
                "v4",
            ],
            "does not exist",
        ),
        (
            &["volume", "create", "-d", "nfs", "v5"],
            "only the local driver",
        ),
        (&["volume", "inspect", "ghost"], "no such volume: ghost"),
        (&["volume", "rm", "ghost"], "no such volume: ghost"),
    ] {
        let out = daemon.cli(args);
        let line = out.one_line_error();
        assert!(line.contains(want), "{args:?}: {line}");
    }
    assert!(volume_names(&daemon).is_empty());
    let out = daemon.cli(&["run", "--rm", "-v", "bad!name:/x", "busybox:test", "true"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("not a valid volume name"), "{out:?}");

    // -v makes a missing host directory, as Docker does; --mount type=bind refuses.
    let made = dir.path().join("made/by/v");
    let out = daemon.cli(&[
        "run",
        "--rm",
        "-v",
        &format!("{}:/m", made.display()),
        "busybox:test",
        "touch",
        "/m/here",
    ]);
    out.ok();
    assert!(made.join("here").exists());
    let missing = dir.path().join("missing");
    let line = daemon
        .cli(&[
            "run",
            "--rm",
            "--mount",
            &format!("type=bind,source={},target=/m", missing.display()),
            "busybox:test",
            "true",
        ])
        .one_line_error()
        .to_owned();
    assert!(
        line.contains("bind source path does not exist") && line.contains("missing"),
        "{line}"
    );
    assert!(!missing.exists());
    assert_eq!(daemon.cli(&["ps", "-a", "-q"]).ok(), "");
}

#[test]
fn tmpfs_and_bind_volume_options() {
    if !can_run_containers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_with_busybox(dir.path());

    daemon
        .cli(&[
            "volume",
            "create",
            "-o",
            "type=tmpfs",
            "-o",
            "device=tmpfs",
            "-o",
            "o=size=1m",
            "ram",
        ])
        .ok();
    let out = daemon.cli(&[
        "run",
        "--rm",
        "-v",
        "ram:/ram",
        "busybox:test",
        "sh",
        "-c",
        "grep ' /ram ' /proc/mounts",
    ]);
    assert!(out.ok().contains("tmpfs"), "{out:?}");
    let mountpoint = daemon.data_root().join("volumes/ram/_data");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&mountpoint.display().to_string()),
        "the tmpfs goes with its last container"
    );
    let volume = inspect(&daemon, &["volume", "inspect", "ram"]);
    assert_eq!(volume[0]["Options"]["type"], "tmpfs");
    assert_eq!(volume[0]["Options"]["o"], "size=1m");

    let device = dir.path().join("device");
    std::fs::create_dir(&device).unwrap();
    daemon
        .cli(&[
            "volume",
            "create",
            "-o",
            "type=none",
            "-o",
            "o=bind",
            "-o",
            &format!("device={}", device.display()),
            "host-dir",
        ])
        .ok();
    daemon
        .cli(&[
            "run",
            "--rm",
            "-v",
            "host-dir:/h",
            "busybox:test",
            "sh",
            "-c",
            "echo through > /h/file",
        ])
        .ok();
    assert_eq!(
        std::fs::read_to_string(device.join("file")).unwrap(),
        "through\n"
    );
    daemon.cli(&["volume", "rm", "ram", "host-dir"]).ok();
    assert!(
        device.join("file").exists(),
        "removing a bind volume keeps the host directory"
    );
}
