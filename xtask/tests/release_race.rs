//! End-to-end tests of releases at the same time: two clones of one origin (a bare repository
//! on disk) releasing at once, serialized by the release lock on that origin, on the lab
//! registry and on the Nexus look-alike (tag pages of two, HEAD 404, Bearer tokens). Also a
//! release on the published monorepo's layout (tests/fixtures/intric-layout), which promotes
//! the two images its compose file builds.
//!
//! Release only promotes what the registry holds under `sha-<12 hex>`, so the images are tiny
//! ones of the test's own (`docker import` of one marker file per commit and image), pushed
//! with docker, not built: these tests are about what moves the tags, not about builds. The
//! repository is a small one with the compose file's shape (backend, worker, frontend built).
//! Each run uses its own namespace, `race-<pid>-<nanos>`, below `127.0.0.1:5000` (the lab
//! registry) and `127.0.0.1:5001/dev` (the look-alike), so its release tags meet no one
//! else's; the local images it imports are removed at the end, also when a test fails. No ports
//! or compose projects of its own. With `CI` set a missing engine fails them.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::*;

const SERVICES: [&str; 3] = ["backend", "worker", "frontend"];

const COMPOSE: &str = "\
services:
  backend:
    image: ${NEXUS_REGISTRY}/intric/backend:${IMAGE_TAG:-latest}
    build: { context: backend, target: backend }
  worker:
    image: ${NEXUS_REGISTRY}/intric/worker:${IMAGE_TAG:-latest}
    build: { context: backend, target: worker }
  frontend:
    image: ${NEXUS_REGISTRY}/intric/frontend:${IMAGE_TAG:-latest}
    build: { context: frontend }
  db-init:
    image: ${NEXUS_REGISTRY}/intric/backend:${IMAGE_TAG:-latest}
    command: [python, init_db.py]
";

/// One run: its registry (`HOST[:PORT]/PATH` as releases are given it), where the same
/// repositories are read back in the lab registry behind it, and a scratch directory.
struct Race {
    registry: String,
    upstream_prefix: String,
    upstream: LabRegistry,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    /// The images imported for this run, removed from the engine at the end.
    _images: LocalImagesUnder,
}

impl Race {
    /// A run below `host_path` (`127.0.0.1:5000` or `127.0.0.1:5001/dev`), whose repositories
    /// the lab registry holds below `upstream_path` (empty, or `dev`).
    fn new(host_path: &str, upstream_path: &str) -> Race {
        let namespace = unique_name("race");
        let upstream_prefix = match upstream_path {
            "" => namespace.clone(),
            path => format!("{path}/{namespace}"),
        };
        let registry = format!("{host_path}/{namespace}");
        let race = Race {
            _images: LocalImagesUnder(format!("{registry}/")),
            registry,
            upstream_prefix,
            upstream: LabRegistry::new(),
            // The lab's login (NEXUS_USERNAME, NEXUS_PASSWORD); the registry comes with --registry.
            env: lab_login_env(),
            dir: tempfile::tempdir().unwrap(),
        };
        let seed = race.path("seed");
        std::fs::create_dir_all(seed.join("backend")).unwrap();
        std::fs::create_dir_all(seed.join("frontend")).unwrap();
        std::fs::write(seed.join("compose.yaml"), COMPOSE).unwrap();
        std::fs::write(
            seed.join("backend/Dockerfile"),
            "FROM scratch AS backend\nCOPY marker /\nFROM backend AS worker\n",
        )
        .unwrap();
        std::fs::write(seed.join("frontend/Dockerfile"), "FROM scratch\nCOPY marker /\n").unwrap();
        git(&seed, &["init", "-q", "-b", "main"]);
        commit_all(&seed, "feat: the first commit");
        add_bare_origin(&seed, &race.path("origin.git"));
        race
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A fresh clone of origin called `name`.
    fn clone(&self, name: &str) -> PathBuf {
        git(self.dir.path(), &["clone", "-q", self.path("origin.git").to_str().unwrap(), name]);
        self.path(name)
    }

    /// A new commit in `repo` whose three images are pushed, as the main stage would have:
    /// returns each image's identity (its config digest) by service.
    fn commit_and_push(&self, repo: &Path, marker: &str) -> BTreeMap<String, String> {
        self.commit_and_push_images(repo, marker, &SERVICES)
    }

    /// [`Race::commit_and_push`] for the images `services`.
    fn commit_and_push_images(&self, repo: &Path, marker: &str, services: &[&str]) -> BTreeMap<String, String> {
        std::fs::write(repo.join("backend/marker"), format!("{marker}\n")).unwrap();
        commit_all(repo, &format!("fix: {marker}"));
        let sha = sha_tag(repo);
        let mut pushed = BTreeMap::new();
        for &service in services {
            let image = format!("{}/intric/{service}:{sha}", self.registry);
            import_file_image(&image, "marker", format!("{service} {marker} {sha}\n").as_bytes());
            push_image(&image);
            pushed.insert(service.to_string(), self.identity(service, &sha));
        }
        pushed
    }

    /// Which image `intric/<service>:<tag>` is in the registry: its config's digest.
    fn identity(&self, service: &str, tag: &str) -> String {
        let manifest = self.upstream.manifest(&format!("{}/intric/{service}", self.upstream_prefix), tag);
        manifest["config"]["digest"].as_str().unwrap().to_string()
    }

    fn tags(&self, service: &str) -> Vec<String> {
        self.upstream.tags(&format!("{}/intric/{service}", self.upstream_prefix))
    }

    /// `release VERSION --execute --json` in `repo`, as a process not yet waited for.
    fn start_release(&self, repo: &Path, version: &str, extra: &[&str]) -> std::process::Child {
        let args = [&[version, "--execute", "--json", "--registry", &self.registry][..], extra].concat();
        release_command(repo, &args, &self.env).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    }

    fn release(&self, repo: &Path, version: &str, extra: &[&str]) -> Output {
        self.start_release(repo, version, extra).wait_with_output().unwrap()
    }

    /// The commit origin's tag `name` names, if origin has it.
    fn origin_tag(&self, name: &str) -> Option<String> {
        let listed = run("git", &["ls-remote", "origin.git", &format!("refs/tags/{name}^{{}}")], self.dir.path());
        stdout(&listed).split_whitespace().next().map(str::to_string)
    }
}

/// The digests a release's JSON report gives, by service.
fn reported(output: &Output) -> BTreeMap<String, String> {
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    json["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| (image["service"].as_str().unwrap().to_string(), image["digest"].as_str().unwrap().to_string()))
        .collect()
}

/// The whole story on one registry.
fn releases_at_once(host_path: &str, upstream_path: &str) {
    let race = Race::new(host_path, upstream_path);
    let seed = race.path("seed");
    let behind = race.clone("behind");

    // 5.0.0 from the seed clone; `behind` never fetches it.
    let five = race.commit_and_push(&seed, "five");
    assert_success(&run("git", &["push", "-q", "origin", "main"], &seed), "git push");
    let done = race.release(&seed, "5.0.0", &[]);
    assert_success(&done, "release 5.0.0");
    assert_eq!(race.origin_tag("v5.0.0").as_deref(), Some(head(&seed).as_str()), "v5.0.0 is on origin");
    assert!(race.origin_tag("release-lock").is_none(), "the lock is released");
    for service in SERVICES {
        assert_eq!(race.identity(service, "latest"), five[service]);
    }

    // A clone that never saw v5.0.0 cannot move `latest` back to 4.0.0: the registry knows 5.0.0.
    race.commit_and_push(&behind, "four");
    let refused = race.release(&behind, "4.0.0", &[]);
    assert!(!refused.status.success(), "4.0.0 after 5.0.0 is refused");
    assert!(
        stderr(&refused).contains("4.0.0 would start the 4.0 line below the newest release 5.0.0"),
        "{}",
        stderr(&refused)
    );
    for service in SERVICES {
        assert_eq!(race.identity(service, "latest"), five[service], "{service}: latest stays on 5.0.0");
        assert!(!race.tags(service).contains(&"4.0.0".to_string()));
    }
    assert!(race.origin_tag("v4.0.0").is_none());
    // There --bump starts from the registry's 5.0.0, which its git does not know.
    let bumped = release(&behind, &["--bump", "patch", "--registry", &race.registry], &race.env);
    assert_success(&bumped, "release --bump patch (dry run)");
    assert!(stdout(&bumped).starts_with("release 5.0.1 of "), "{}", stdout(&bumped));

    // A lock left behind by a release killed on another machine: refused, naming it, until
    // --break-lock.
    let killed = race.clone("killed");
    let plant_lock = |message: &str| {
        let made = run(
            "git",
            &[
                "-c",
                "user.name=ghost",
                "-c",
                "user.email=ghost@nowhere",
                "commit-tree",
                "HEAD^{tree}",
                "-p",
                "HEAD",
                "-m",
                message,
            ],
            &killed,
        );
        let lock = stdout(&made).trim().to_string();
        assert_success(
            &run("git", &["push", "-q", "origin", &format!("{lock}:refs/tags/release-lock")], &killed),
            "plant a lock",
        );
    };
    plant_lock(
        "release lock: release 5.5.0 by ghost@nowhere (pid 1) since 2026-12-01T00:00:00Z\n\nversion: 5.5.0\nuser: ghost\nhost: nowhere\npid: 1\nsince: 2026-12-01T00:00:00Z",
    );
    let six_images = race.commit_and_push(&killed, "six");
    let refused = race.release(&killed, "6.0.0", &[]);
    assert!(!refused.status.success());
    let error = stderr(&refused);
    assert!(
        error.contains("another release holds the release lock on origin (refs/tags/release-lock): release 5.5.0 by ghost@nowhere (pid 1) since 2026-12-01T00:00:00Z"),
        "{error}"
    );
    assert!(error.contains("--break-lock"), "{error}");
    assert!(!race.tags("backend").contains(&"6.0.0".to_string()), "nothing moved");
    let broken = race.release(&killed, "6.0.0", &["--break-lock"]);
    assert_success(&broken, "release 6.0.0 --break-lock");
    assert!(
        stderr(&broken).contains("broke the release lock of release 5.5.0 by ghost@nowhere"),
        "{}",
        stderr(&broken)
    );
    assert!(race.origin_tag("release-lock").is_none(), "our lock is released, and the ghost's is gone");
    assert_eq!(race.identity("worker", "6.0.0"), six_images["worker"]);

    // A lock left by a release interrupted on this machine (Ctrl-C): its commit names this
    // boot and pid namespace and a pid that has exited, so the next release takes it over.
    let mut exited = std::process::Command::new("true").spawn().unwrap();
    let pid = exited.id();
    exited.wait().unwrap();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let namespace = std::fs::read_link("/proc/self/ns/pid").unwrap();
    plant_lock(&format!(
        "release lock: release 6.5.0 by ann@here (pid {pid}) since 2026-12-01T00:00:00Z\n\nversion: 6.5.0\nuser: ann\n\
         host: here\npid: {pid}\nsince: 2026-12-01T00:00:00Z\nprocesses: boot {} {}\n",
        boot.trim(),
        namespace.display()
    ));
    let interrupted_images = race.commit_and_push(&killed, "after-interrupt");
    let resumed = race.release(&killed, "6.6.0", &[]);
    assert_success(&resumed, "release 6.6.0 over the lock of an interrupted release");
    assert!(
        stderr(&resumed).contains(&format!("took over the release lock of release 6.5.0 by ann@here (pid {pid})")),
        "{}",
        stderr(&resumed)
    );
    assert!(race.origin_tag("release-lock").is_none(), "our lock is released, and the interrupted one's is gone");
    assert_eq!(race.identity("worker", "6.6.0"), interrupted_images["worker"]);

    // Two versions at once from two clones: afterwards latest, X and X.Y are on the higher
    // one for every image. The one that lost is refused (by the lock, or under it by the
    // newer release) having changed nothing, and is run again.
    let (seven, eight) = (race.clone("seven"), race.clone("eight"));
    let seven_images = race.commit_and_push(&seven, "seven");
    let eight_images = race.commit_and_push(&eight, "eight");
    let (a, b) = (race.start_release(&seven, "7.0.0", &[]), race.start_release(&eight, "8.0.0", &[]));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for (output, version, repo) in [(&a, "7.0.0", &seven), (&b, "8.0.0", &eight)] {
        if output.status.success() {
            continue;
        }
        let error = stderr(output);
        eprintln!("{version} lost the race: {}", error.lines().last().unwrap_or_default());
        assert!(
            error.contains("another release holds the release lock on origin")
                || error.contains("7.0.0 would start the 7.0 line below the newest release 8.0.0"),
            "{version} failed otherwise:\n{error}"
        );
        if error.contains("holds the release lock") {
            assert!(
                error.contains("release 7.0.0 by") || error.contains("release 8.0.0 by"),
                "names the winner: {error}"
            );
        }
        for service in SERVICES {
            assert!(!race.tags(service).contains(&version.to_string()), "the refused {version} changed nothing");
        }
        let again = race.release(repo, version, &[]);
        if version == "8.0.0" {
            assert_success(&again, "8.0.0 run again");
        }
    }
    for service in SERVICES {
        for tag in ["8.0.0", "8.0", "8", "latest"] {
            assert_eq!(race.identity(service, tag), eight_images[service], "{service}:{tag} is 8.0.0's");
        }
        if race.tags(service).contains(&"7.0.0".to_string()) {
            for tag in ["7.0.0", "7.0", "7"] {
                assert_eq!(race.identity(service, tag), seven_images[service], "{service}:{tag} is 7.0.0's");
            }
        }
    }
    assert_eq!(race.origin_tag("v8.0.0").as_deref(), Some(head(&eight).as_str()));
    assert!(race.origin_tag("release-lock").is_none());

    // The same version at once from two clones of one commit: one wins, the other changes
    // nothing; origin's tag and the registry agree with the winner's report.
    let nine = race.clone("nine");
    let nine_images = race.commit_and_push(&nine, "nine");
    assert_success(&run("git", &["push", "-q", "origin", "main"], &nine), "git push");
    let twin = race.clone("twin");
    assert_eq!(head(&twin), head(&nine));
    let (a, b) = (race.start_release(&nine, "9.0.0", &[]), race.start_release(&twin, "9.0.0", &[]));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() != b.status.success(), "one wins:\n{}\n{}", stderr(&a), stderr(&b));
    let (winner, loser) = if a.status.success() { (&a, &b) } else { (&b, &a) };
    let error = stderr(loser);
    eprintln!("9.0.0 lost the race: {}", error.lines().last().unwrap_or_default());
    assert!(
        error.contains("another release holds the release lock") || error.contains("9.0.0 is already released from"),
        "{error}"
    );
    let again = race.release(&twin, "9.0.0", &[]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("9.0.0 is already released from"), "{}", stderr(&again));
    assert_eq!(race.origin_tag("v9.0.0").as_deref(), Some(head(&nine).as_str()));
    let report = reported(winner);
    for service in SERVICES {
        assert_eq!(race.identity(service, "9.0.0"), nine_images[service]);
        let manifest = race.upstream.get(
            &format!("/v2/{}/intric/{service}/manifests/9.0.0", race.upstream_prefix),
            "application/vnd.docker.distribution.manifest.v2+json",
        );
        assert_eq!(manifest.0, 200);
        let digest = sha256_digest(&manifest.1);
        assert_eq!(report[service], digest, "{service}: the winner's report is what the registry holds");
    }
    assert!(race.origin_tag("release-lock").is_none());
}

#[test]
fn releases_at_once_on_the_lab_registry_are_serialized_by_the_lock_on_origin() {
    let Some(_serial) = lab_test() else { return };
    docker_login(&lab()["NEXUS_REGISTRY"]);
    releases_at_once(&lab()["NEXUS_REGISTRY"], "");
}

#[test]
fn releases_at_once_on_the_nexus_look_alike_are_serialized_by_the_lock_on_origin() {
    let Some(_serial) = lab_test() else { return };
    nexus_lab();
    docker_login(NEXUS);
    releases_at_once(&format!("{NEXUS}/dev"), "dev");
}

/// Copies the directory `from` into `to`, recursively.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn on_the_published_layout_a_release_promotes_exactly_the_two_images_compose_builds() {
    let Some(_serial) = lab_test() else { return };
    docker_login(&lab()["NEXUS_REGISTRY"]);
    let race = Race::new(&lab()["NEXUS_REGISTRY"], "");
    // The published monorepo's shape (tests/fixtures/intric-layout): the compose file at the
    // root, no docker/ directory, and a worker that runs the backend image with its own command.
    let repo = race.clone("published");
    for ours in ["compose.yaml", "backend", "frontend"] {
        let path = repo.join(ours);
        if path.is_dir() { std::fs::remove_dir_all(&path).unwrap() } else { std::fs::remove_file(&path).unwrap() }
    }
    copy_tree(&workspace().join("xtask/tests/fixtures/intric-layout"), &repo);
    let images = race.commit_and_push_images(&repo, "published", &["backend", "frontend"]);
    let done = race.release(&repo, "1.0.0", &[]);
    assert_success(&done, "release 1.0.0 on the published layout");
    let reported: Vec<String> = reported(&done).into_keys().collect();
    assert_eq!(reported, ["backend", "frontend"], "the images compose builds, no worker image");
    for service in ["backend", "frontend"] {
        for tag in ["1.0.0", "1.0", "1", "latest"] {
            assert_eq!(race.identity(service, tag), images[service], "{service}:{tag}");
        }
    }
    assert!(race.tags("worker").is_empty(), "no intric/worker: {:?}", race.tags("worker"));
    assert_eq!(race.origin_tag("v1.0.0").as_deref(), Some(head(&repo).as_str()));
}
