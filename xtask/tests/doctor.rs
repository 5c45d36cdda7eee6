//! `cargo xtask doctor --dir` against the real engine: a healthcheck whose command is not in its
//! image is reported, one line naming the service, the command and the image, before a deploy
//! would wait minutes for it. Uses the lab's redis stand-in image, which has `redis-cli` but no
//! `wget`, and an image built on it with a HEALTHCHECK of its own, which a service with its own
//! `command:` inherits.

mod common;

const REDIS: &str = "127.0.0.1:5000/lab/redis:lab";

#[test]
fn healthchecks_that_can_never_pass_are_reported() {
    if !common::docker_available() {
        return;
    }
    common::lab();
    let dir = tempfile::tempdir().unwrap();
    // An image with a HEALTHCHECK made for its own command (the backend image's, for a worker).
    let with_check = "intric-doctor-e2e/with-healthcheck:1";
    std::fs::write(dir.path().join("Dockerfile"), format!("FROM {REDIS}\nHEALTHCHECK CMD redis-cli ping\n")).unwrap();
    let built = std::process::Command::new("docker")
        .args(["build", "--quiet", "--tag", with_check, dir.path().to_str().unwrap()])
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .unwrap();
    common::assert_success(&built, "docker build of the image with a healthcheck");
    let compose = format!(
        "services:
  frontend:
    image: {REDIS}
    healthcheck:
      test: [\"CMD\", \"wget\", \"--spider\", \"http://localhost:3000\"]
  redis:
    image: {REDIS}
    healthcheck:
      test: redis-cli ping || exit 1
  worker:
    image: {with_check}
    command: [\"redis-server\", \"--port\", \"7000\"]
"
    );
    std::fs::write(dir.path().join("docker-compose.yml"), compose).unwrap();
    std::fs::write(dir.path().join(".env"), "").unwrap();
    let output = common::xtask(&["doctor", "--dir", dir.path().to_str().unwrap()], &[], &common::workspace());
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(!output.status.success(), "{out}");
    let line = |name: &str| {
        out.lines().find(|line| line.contains(&format!("  healthcheck {name} "))).unwrap_or_else(|| panic!("{out}"))
    };
    let frontend = line("frontend");
    assert!(frontend.starts_with("FAIL"), "{out}");
    assert!(frontend.contains(&format!("wget not in {REDIS}")), "{out}");
    assert!(
        frontend.contains(&format!(
            "the healthcheck `wget --spider http://localhost:3000` of frontend can never pass in {REDIS}"
        )),
        "{out}"
    );
    let redis = line("redis");
    assert!(redis.starts_with("ok") && redis.contains(&format!("/bin/sh, redis-cli in {REDIS}")), "{out}");
    let worker = line("worker");
    assert!(
        worker.starts_with("warn") && worker.contains(&format!("inherits `redis-cli ping` from {with_check}")),
        "{out}"
    );
    let _ = std::process::Command::new("docker").args(["image", "rm", with_check]).output();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("healthcheck frontend") && !stderr.contains("healthcheck redis"), "{stderr}");
    let leftovers = std::process::Command::new("docker")
        .args(["ps", "--all", "--quiet", "--filter", &format!("ancestor={REDIS}"), "--filter", "status=created"])
        .output()
        .unwrap();
    assert!(leftovers.stdout.is_empty(), "the probe left containers behind");
}
