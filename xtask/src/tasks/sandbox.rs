//! `cargo xtask sandbox up | env | down`: the offline lab that every end-to-end test runs on.
//!
//! `up` starts an authenticated Distribution registry on 127.0.0.1 (a stand-in for Nexus) with
//! generated credentials kept under `target/xtask/sandbox/`, and provides the base images the
//! Dockerfiles and the compose stack need: pulled from upstream where that works, otherwise built
//! from Debian packages (`docker/lab/*.Dockerfile` on a debootstrap root filesystem). It pushes
//! them to the lab registry. `env` prints the variables that point the other tasks at the lab;
//! `down` stops the registry and keeps images and registry data. With `--nexus`, `up` also starts
//! a proxy in front of the registry that behaves like Nexus (`nexus.rs`).

mod nexus;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};

use crate::adapters::docker::{BuildSpec, Docker};
use crate::adapters::dotenv::{DotEnv, random_hex};
use crate::adapters::registry::{Credentials, Registry, RegistryAddress};
use crate::images::{BASE_IMAGES, BaseImage};
use crate::plan::runner::{Processes, Runner};
use crate::plan::{Command, FileContents, Plan, Secret, Step, shell_quote, show_or_run};

#[derive(Subcommand)]
pub enum SandboxCommand {
    /// Start the lab registry and provide the base images (idempotent).
    ///
    /// Example: cargo xtask sandbox up && eval "$(cargo xtask sandbox env)"
    Up(UpArgs),
    /// Print the variables that point builds and deploys at the lab: `export KEY=VALUE` lines
    /// for a POSIX shell to eval, or dotenv or JSON.
    ///
    /// Example: eval "$(cargo xtask sandbox env)"
    Env(EnvArgs),
    /// Stop the lab registry; images and pushed data are kept.
    ///
    /// Example: cargo xtask sandbox down
    Down(DownArgs),
}

#[derive(Args)]
pub struct EnvArgs {
    /// `shell`: `export KEY=VALUE` lines, values quoted for a POSIX shell; `dotenv`: `KEY=VALUE`
    /// lines as in a `.env` file (`--env-file`); `json`: one object.
    ///
    /// Example: cargo xtask sandbox env --format dotenv > lab.env
    #[arg(long, value_enum, default_value_t = EnvFormat::Shell)]
    format: EnvFormat,
}

/// How `sandbox env` prints the lab's variables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EnvFormat {
    Shell,
    Dotenv,
    Json,
}

#[derive(Args)]
pub struct UpArgs {
    /// The port of the lab registry on 127.0.0.1.
    #[arg(long, default_value_t = 5000)]
    port: u16,
    /// Also start a proxy in front of the registry that behaves like Sonatype Nexus 3:
    /// repositories `dev` (redeploy allowed) and `release` (redeploy disabled) by path, a Bearer
    /// token realm, HEAD on manifests answering 404, tag pages without `Link`.
    ///
    /// Example: cargo xtask sandbox up --nexus && NEXUS_REGISTRY=127.0.0.1:5001/dev cargo xtask build --push
    #[arg(long)]
    nexus: bool,
    /// The Nexus look-alike's port on 127.0.0.1 [default: the registry's port + 1].
    #[arg(long, requires = "nexus")]
    nexus_port: Option<u16>,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
pub struct DownArgs {
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// The lab's own registry image: a stand-in too where Docker Hub is out of reach.
const REGISTRY_IMAGE: BaseImage = BaseImage { name: "registry", variable: "", upstream: "registry:2" };

/// The Debian root filesystem that stand-ins are built on, imported into the engine.
const DEBIAN_IMAGE: &str = "intric-lab/debian:bookworm";
/// Where apt keeps the host's package sources; the lab's debootstrap uses the same mirror.
const APT_SOURCES: [&str; 2] = ["/etc/apt/sources.list.d", "/etc/apt/sources.list"];
const REGISTRY_CONTAINER: &str = "intric-lab-registry";
const REGISTRY_VOLUME: &str = "intric-lab-registry-data";
/// The registry container's label naming the state directory it was started from.
const STATE_LABEL: &str = "org.intric.lab.state";
const LAB_USER: &str = "lab";
/// Where the host keeps extra CA certificates (a TLS-intercepting proxy's, say); stand-ins get them
/// so that pip and npm inside builds trust the same roots as the host.
const HOST_EXTRA_CERTIFICATES: &str = "/usr/local/share/ca-certificates";

/// The name the lab gives a base image in the local engine.
fn local_name(image: &BaseImage) -> String {
    format!("intric-lab/{}:lab", image.name)
}

/// The name of a base image in the lab registry.
fn registry_name(image: &BaseImage, registry: &str) -> String {
    format!("{registry}/lab/{}:lab", image.name)
}

/// Files the lab keeps between runs.
struct LabPaths {
    dir: PathBuf,
}

impl LabPaths {
    fn new() -> LabPaths {
        LabPaths { dir: crate::adapters::workspace_root().join("target/xtask/sandbox") }
    }
    /// KEY=VALUE lines printed by `env`, including the generated password: mode 0600.
    fn env_file(&self) -> PathBuf {
        self.dir.join("lab.env")
    }
    fn htpasswd(&self) -> PathBuf {
        self.dir.join("htpasswd")
    }
    fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
    fn node_context(&self) -> PathBuf {
        self.dir.join("node-context")
    }
}

pub fn run(command: SandboxCommand) -> Result<()> {
    let runner = Processes::new();
    let paths = LabPaths::new();
    match command {
        SandboxCommand::Up(args) => {
            // One `up` at a time on this machine (two checkouts, or two test runs): the second
            // waits, then finds the registry the first started and adopts its credentials
            // instead of racing it for the container's name.
            let _machine_wide = (!args.dry_run).then(|| lock_machine(args.port)).transpose()?;
            let nexus_port = args.nexus.then(|| args.nexus_port.unwrap_or(args.port.saturating_add(1)));
            let inputs = read_up_inputs(&runner, &paths, args.port, nexus_port, args.dry_run)?;
            let plan = plan_up(&inputs, &paths);
            show_or_run(&plan, args.dry_run, &runner)?;
            if !args.dry_run {
                eprintln!(
                    "lab registry on {} as user {LAB_USER}; `eval \"$(cargo xtask sandbox env)\"` to use it",
                    inputs.registry
                );
                if let Some(nexus) = &inputs.nexus.wanted {
                    eprintln!("Nexus look-alike on {0}: repositories {0}/dev and {0}/release", nexus.address);
                }
            }
            Ok(())
        }
        SandboxCommand::Env(args) => {
            let env_file = paths.env_file();
            let mut text = std::fs::read_to_string(&env_file).with_context(|| {
                format!("the lab is not up ({} is missing): run `cargo xtask sandbox up` first", env_file.display())
            })?;
            if let Some(nexus) = nexus::env_lines(&runner, &paths) {
                text.push_str(&nexus);
            }
            let env = DotEnv::parse(&env_file, &text)?;
            let pairs: Vec<(&str, &str)> =
                env.entries().map(|entry| (entry.key.as_str(), entry.value.as_str())).collect();
            print!("{}", format_env(&pairs, args.format));
            Ok(())
        }
        SandboxCommand::Down(args) => {
            let docker = Docker::detect(&runner)?;
            let mut plan = Plan::default();
            nexus::plan_down(&runner, &docker, &mut plan);
            if docker.container_state(&runner, REGISTRY_CONTAINER).is_some() {
                plan.run(docker.command().args(["rm", "--force", REGISTRY_CONTAINER]));
            }
            show_or_run(&plan, args.dry_run, &runner).map(|_| ())
        }
    }
}

/// An exclusive lock on a file per lab port in the system's temporary directory, held until
/// the returned file is dropped; the kernel releases it if the process dies.
fn lock_machine(port: u16) -> Result<std::fs::File> {
    let path = std::env::temp_dir().join(format!("intric-lab-{port}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.lock().with_context(|| format!("cannot lock {}", path.display()))?;
    Ok(file)
}

/// How to provide one base image that the engine doesn't have yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// Pulled from Docker Hub (or its mirror), where that answers.
    Upstream,
    /// Pulled back from the lab registry, which holds it from an earlier `up`.
    LabRegistry,
    /// Built from Debian packages (`docker/lab/`).
    StandIn,
}

/// Everything `up` decides from, read once.
struct UpInputs {
    docker: Docker,
    registry: String,
    password: Secret,
    /// The password was just generated: files and the registry container must be renewed.
    new_password: bool,
    /// The registry container is running with the current port and credentials.
    registry_running: bool,
    registry_exists: bool,
    /// Images (the registry's own first, then the base images) the engine lacks, with their source.
    missing: Vec<(&'static BaseImage, Source)>,
    debian_image_present: bool,
    /// The Debian archive debootstrap fetches from.
    debian_mirror: String,
    /// The password file of the checkout that started the running registry, when adopting it.
    adopted_htpasswd: Option<String>,
    /// The Nexus look-alike: wanted (`--nexus`), and what runs already.
    nexus: nexus::NexusInputs,
}

fn read_up_inputs(
    runner: &dyn Runner,
    paths: &LabPaths,
    port: u16,
    nexus_port: Option<u16>,
    dry_run: bool,
) -> Result<UpInputs> {
    let docker = Docker::detect(runner)?;
    let registry = format!("127.0.0.1:{port}");
    // The registry container is one per machine, but every checkout has its own target/. The
    // container names the state directory whose credentials it was started with, so another
    // checkout adopts those instead of replacing the registry (and everyone's login) with new ones.
    let state = docker.container_state(runner, REGISTRY_CONTAINER);
    let owner = state.as_ref().and_then(|_| {
        let format = format!("{{{{index .Config.Labels \"{STATE_LABEL}\"}}}}");
        runner.read(&docker.command().args(["container", "inspect", "--format", &format, REGISTRY_CONTAINER])).ok()
    });
    let owner =
        owner.filter(|dir| !dir.is_empty() && Path::new(dir) != paths.dir).map(|dir| LabPaths { dir: dir.into() });
    let adopted = owner.as_ref().and_then(|owner| {
        let env = std::fs::read_to_string(owner.env_file()).ok()?;
        let htpasswd = std::fs::read_to_string(owner.htpasswd()).ok()?;
        Some((env, htpasswd))
    });
    let previous = match &adopted {
        Some((env, _)) => Some(env.clone()),
        None if owner.is_none() => std::fs::read_to_string(paths.env_file()).ok(),
        // Started from a checkout whose state is gone: nobody knows its password any more.
        None => None,
    };
    let previous_value = |key: &str| {
        previous
            .as_deref()
            .and_then(|text| text.lines().find_map(|line| line.strip_prefix(&format!("{key}="))).map(str::to_string))
    };
    let (password, new_password) = match previous_value("NEXUS_PASSWORD") {
        Some(password) if adopted.is_some() || paths.htpasswd().exists() => (password, false),
        _ => (random_hex(16)?, true),
    };
    let same_port = previous_value("NEXUS_REGISTRY").as_deref() == Some(registry.as_str());
    let registry_running = state.as_deref() == Some("running") && same_port && !new_password;

    let all_images = std::iter::once(&REGISTRY_IMAGE).chain(BASE_IMAGES);
    let absent: Vec<&'static BaseImage> =
        all_images.filter(|image| !docker.image_exists(runner, &local_name(image))).collect();
    // A base image the running lab registry holds from an earlier `up` is taken back from there:
    // built again, a stand-in gets a new digest (apt lists, timestamps), which would silently
    // invalidate every build cache keyed on it.
    let in_lab_registry = |image: &BaseImage| {
        let Ok(address) = RegistryAddress::parse(&registry) else { return false };
        let password = Secret::new("NEXUS_PASSWORD", password.clone());
        let credentials = Credentials { username: LAB_USER.to_string(), password };
        let lab = Registry::impatient(address, Some(credentials), std::time::Duration::from_secs(2));
        lab.manifest_digest(&format!("lab/{}", image.name), "lab").is_ok_and(|digest| digest.is_some())
    };
    let (kept, absent): (Vec<&'static BaseImage>, Vec<&'static BaseImage>) = absent
        .into_iter()
        .partition(|image| registry_running && !std::ptr::eq(*image, &REGISTRY_IMAGE) && in_lab_registry(image));
    // Probing upstream pulls the registry image, which `up` needs anyway; a machine without
    // Docker Hub answers at once with a DNS or connection error. A dry run changes nothing, so
    // it does not probe: it shows the offline plan and says so.
    let upstream_reachable = !absent.is_empty()
        && !dry_run
        && runner.read(&docker.command().args(["pull", "--quiet", REGISTRY_IMAGE.upstream])).is_ok();
    if dry_run && !absent.is_empty() {
        eprintln!(
            "note: a dry run does not try Docker Hub; if it answers, `up` pulls {} instead of building stand-ins",
            absent.iter().map(|image| image.upstream).collect::<Vec<_>>().join(", ")
        );
    }
    let source = if upstream_reachable { Source::Upstream } else { Source::StandIn };
    let missing: Vec<_> = kept
        .into_iter()
        .map(|image| (image, Source::LabRegistry))
        .chain(absent.into_iter().map(|image| (image, source)))
        .collect();
    let debian_image_present = docker.image_exists(runner, DEBIAN_IMAGE);

    let needs_debootstrap = missing.iter().any(|(_, source)| *source == Source::StandIn) && !debian_image_present;
    let mut problems = Vec::new();
    if needs_debootstrap && which("debootstrap").is_none() {
        problems.push(
            "debootstrap is missing: stand-in base images are built from Debian packages (apt-get install debootstrap)",
        );
    }
    // The mirror the host's apt already uses (or DEBIAN_MIRROR), so the lab needs no address
    // of its own and works behind whatever mirror or proxy the machine is set up with.
    let debian_mirror =
        std::env::var("DEBIAN_MIRROR").ok().filter(|mirror| !mirror.is_empty()).or_else(host_debian_mirror);
    if needs_debootstrap && debian_mirror.is_none() {
        problems
            .push("no Debian mirror found in /etc/apt/sources.list*: set DEBIAN_MIRROR to one (http://HOST/debian)");
    }
    if needs_debootstrap && !is_root() {
        problems.push("building the Debian root filesystem needs root: run `sandbox up` as root once");
    }
    if missing.iter().any(|(image, source)| image.name == "node" && *source == Source::StandIn)
        && which("npm").is_none()
    {
        problems.push(
            "npm is missing: the node stand-in gets npm from `npm pack` on this machine (install Node.js with npm)",
        );
    }
    if new_password && which("htpasswd").is_none() {
        problems
            .push("htpasswd is missing: it writes the lab registry's password file (apt-get install apache2-utils)");
    }
    if !problems.is_empty() {
        bail!("cannot start the lab: {}", problems.join("; "));
    }
    let nexus = nexus::read(runner, &docker, paths, &registry, nexus_port, new_password || !same_port)?;
    Ok(UpInputs {
        docker,
        registry,
        password: Secret::new("NEXUS_PASSWORD", password),
        new_password,
        registry_running,
        registry_exists: state.is_some(),
        missing,
        debian_image_present,
        debian_mirror: debian_mirror.unwrap_or_default(),
        adopted_htpasswd: adopted.map(|(_, htpasswd)| htpasswd),
        nexus,
    })
}

/// The first Debian archive URI in the host's apt sources (one-line or deb822 format), not the
/// security archive.
fn host_debian_mirror() -> Option<String> {
    let mut files = Vec::new();
    for path in APT_SOURCES {
        match std::fs::read_dir(path) {
            Ok(entries) => files.extend(entries.flatten().map(|entry| entry.path())),
            Err(_) => files.push(PathBuf::from(path)),
        }
    }
    files.sort();
    files.iter().filter_map(|file| std::fs::read_to_string(file).ok()).find_map(|text| debian_mirror_in(&text))
}

fn debian_mirror_in(sources: &str) -> Option<String> {
    sources
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .flat_map(|line| match line.strip_prefix("URIs:") {
            Some(uris) => uris.split_whitespace().collect::<Vec<_>>(),
            None => line
                .strip_prefix("deb ")
                .map(|rest| rest.split_whitespace().filter(|word| !word.starts_with('[')).take(1).collect())
                .unwrap_or_default(),
        })
        .find(|uri| uri.trim_end_matches('/').ends_with("/debian"))
        .map(|uri| uri.trim_end_matches('/').to_string())
}

fn plan_up(inputs: &UpInputs, paths: &LabPaths) -> Plan {
    let docker = &inputs.docker;
    let mut plan = Plan::default();

    let stand_ins: Vec<&BaseImage> =
        inputs.missing.iter().filter(|(_, source)| *source == Source::StandIn).map(|(image, _)| *image).collect();
    if !stand_ins.is_empty() && !inputs.debian_image_present {
        plan_debian_image(&mut plan, docker, paths, &inputs.debian_mirror);
    }
    for (image, source) in &inputs.missing {
        match source {
            Source::Upstream => {
                plan.run(docker.command().args(["pull", image.upstream]));
                plan.run(docker.command().args(["tag", image.upstream, &local_name(image)]));
            }
            Source::LabRegistry => {
                let remote = registry_name(image, &inputs.registry);
                plan.run(docker.command().args(["pull", "--quiet", &remote]));
                plan.run(docker.command().args(["tag", &remote, &local_name(image)]));
            }
            Source::StandIn => plan_stand_in(&mut plan, docker, paths, image),
        }
    }

    if let Some(htpasswd) = &inputs.adopted_htpasswd {
        plan.write(paths.htpasswd(), FileContents::Secret(Secret::new("htpasswd", htpasswd.clone())), 0o644);
    }
    if inputs.new_password {
        plan.steps.push(Step::Capture {
            command: Command::new("htpasswd").args(["-niB", LAB_USER]).stdin(inputs.password.clone()),
            path: paths.htpasswd(),
            mode: 0o644,
        });
    }
    plan.write(paths.env_file(), FileContents::Secret(Secret::new("lab.env", env_file_text(inputs))), 0o600);
    if !inputs.registry_running {
        if inputs.registry_exists {
            plan.run(docker.command().args(["rm", "--force", REGISTRY_CONTAINER]));
        }
        plan.run(docker.command().args(registry_run_args(&inputs.registry, paths)));
    }
    plan.steps.push(Step::WaitFor {
        command: docker.login(&inputs.registry, LAB_USER, inputs.password.clone()),
        seconds: 30,
    });
    for image in BASE_IMAGES {
        let remote = registry_name(image, &inputs.registry);
        plan.run(docker.command().args(["tag", &local_name(image), &remote]));
        plan.run(docker.command().args(["push", "--quiet", &remote]));
    }
    nexus::plan(&mut plan, docker, paths, &inputs.registry, &inputs.password, &inputs.nexus);
    plan
}

/// debootstrap a minimal Debian, give it the host's extra CA certificates, import it.
fn plan_debian_image(plan: &mut Plan, docker: &Docker, paths: &LabPaths, mirror: &str) {
    let rootfs = paths.rootfs().display().to_string();
    let tarball = format!("{rootfs}.tar");
    plan.run(Command::new("rm").args(["-rf", &rootfs, &tarball]));
    plan.run(
        Command::new("debootstrap")
            .args(["--variant=minbase", "--include=ca-certificates", "bookworm", &rootfs, mirror])
            .hint("debootstrap needs root and plain HTTP access to the Debian mirror"),
    );
    plan.run(Command::new("cp").args([
        "-r".to_string(),
        format!("{HOST_EXTRA_CERTIFICATES}/."),
        format!("{rootfs}{HOST_EXTRA_CERTIFICATES}/"),
    ]));
    plan.run(Command::new("chroot").args([&rootfs, "update-ca-certificates"]));
    plan.run(Command::new("rm").args([
        "-rf".to_string(),
        format!("{rootfs}/var/cache/apt/archives"),
        format!("{rootfs}/var/lib/apt/lists"),
    ]));
    plan.run(Command::new("tar").args(["-C", &rootfs, "-cf", &tarball, "."]));
    let bundle = "/etc/ssl/certs/ca-certificates.crt";
    let mut import = docker.command().arg("import");
    // pip, Poetry (requests) and npm carry their own CA bundles; point them at the system's.
    for change in [
        format!("ENV PIP_CERT={bundle}"),
        format!("ENV REQUESTS_CA_BUNDLE={bundle}"),
        format!("ENV NODE_EXTRA_CA_CERTS={bundle}"),
        "ENV DEBIAN_FRONTEND=noninteractive".to_string(),
        r#"CMD ["bash"]"#.to_string(),
    ] {
        import = import.arg("--change").arg(change);
    }
    plan.run(import.args([&tarball, DEBIAN_IMAGE]));
    plan.run(Command::new("rm").args(["-rf", &rootfs, &tarball]));
}

/// Builds `docker/lab/<name>.Dockerfile` on the Debian image.
fn plan_stand_in(plan: &mut Plan, docker: &Docker, paths: &LabPaths, image: &BaseImage) {
    let lab_dir = crate::adapters::workspace_root().join("docker/lab");
    // The node stand-in takes npm from its registry tarball, packed on the host.
    let context = if image.name == "node" {
        let context = paths.node_context();
        plan.run(Command::new("rm").args(["-rf".to_string(), context.display().to_string()]));
        plan.run(Command::new("mkdir").args(["-p".to_string(), context.display().to_string()]));
        plan.run(
            Command::new("npm")
                .args(["pack", "--silent", "npm@10", "--pack-destination"])
                .arg(context.display().to_string()),
        );
        context
    } else {
        lab_dir.clone()
    };
    let spec = BuildSpec {
        context,
        dockerfile: lab_dir.join(format!("{}.Dockerfile", image.name)),
        tags: vec![local_name(image)],
        build_args: vec![("DEBIAN_IMAGE".into(), DEBIAN_IMAGE.into())],
        ..BuildSpec::default()
    };
    plan.run(
        docker.build(&spec).hint(format!("building the {} stand-in failed; see the build output above", image.name)),
    );
}

fn registry_run_args(registry: &str, paths: &LabPaths) -> Vec<String> {
    let port = registry.rsplit(':').next().unwrap_or("5000");
    let mut args: Vec<String> =
        ["run", "--detach", "--name", REGISTRY_CONTAINER, "--restart", "unless-stopped", "--publish"]
            .map(String::from)
            .into();
    args.push(format!("127.0.0.1:{port}:5000"));
    args.extend(["--volume".to_string(), format!("{REGISTRY_VOLUME}:/var/lib/registry")]);
    args.extend(["--volume".to_string(), format!("{}:/auth/htpasswd:ro", paths.htpasswd().display())]);
    args.extend(["--label".to_string(), format!("{STATE_LABEL}={}", paths.dir.display())]);
    for (key, value) in [
        ("REGISTRY_HTTP_ADDR", "0.0.0.0:5000"),
        ("REGISTRY_AUTH", "htpasswd"),
        ("REGISTRY_AUTH_HTPASSWD_REALM", "intric-lab"),
        ("REGISTRY_AUTH_HTPASSWD_PATH", "/auth/htpasswd"),
        ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "/var/lib/registry"),
        ("REGISTRY_STORAGE_DELETE_ENABLED", "true"),
    ] {
        args.extend(["--env".to_string(), format!("{key}={value}")]);
    }
    args.push(local_name(&REGISTRY_IMAGE));
    args
}

fn env_file_text(inputs: &UpInputs) -> String {
    let mut text = format!(
        "NEXUS_REGISTRY={}\nNEXUS_USERNAME={LAB_USER}\nNEXUS_PASSWORD={}\n",
        inputs.registry,
        inputs.password.expose()
    );
    for image in BASE_IMAGES {
        text.push_str(&format!("{}={}\n", image.variable, registry_name(image, &inputs.registry)));
    }
    text
}

/// The lab's variables as `format` wants them. The shell form quotes every value that needs it,
/// so that `eval "$(cargo xtask sandbox env)"` exports exactly these values.
fn format_env(pairs: &[(&str, &str)], format: EnvFormat) -> String {
    match format {
        EnvFormat::Shell => pairs.iter().map(|(key, value)| format!("export {key}={}\n", shell_quote(value))).collect(),
        EnvFormat::Dotenv => pairs.iter().map(|(key, value)| format!("{key}={value}\n")).collect(),
        EnvFormat::Json => {
            let object: serde_json::Map<String, serde_json::Value> =
                pairs.iter().map(|(key, value)| (key.to_string(), serde_json::Value::from(*value))).collect();
            format!("{}\n", serde_json::Value::Object(object))
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(program)).find(|path| path.is_file())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .map(|uids| uids.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::docker::Builder;

    pub(super) fn inputs(missing: Vec<(&'static BaseImage, Source)>) -> UpInputs {
        UpInputs {
            docker: Docker { program: "docker".into(), builder: Builder::Legacy, engine_version: "20.10.24".into() },
            registry: "127.0.0.1:5000".into(),
            password: Secret::new("NEXUS_PASSWORD", "canary-lab-password"),
            new_password: true,
            registry_running: false,
            registry_exists: false,
            missing,
            debian_image_present: false,
            debian_mirror: "http://mirror.example/debian".into(),
            adopted_htpasswd: None,
            nexus: nexus::NexusInputs::none(),
        }
    }

    pub(super) fn paths() -> LabPaths {
        LabPaths { dir: "/lab".into() }
    }

    #[test]
    fn first_up_offline_builds_stand_ins_then_starts_registry_and_pushes() {
        let missing =
            std::iter::once(&REGISTRY_IMAGE).chain(BASE_IMAGES).map(|image| (image, Source::StandIn)).collect();
        let plan = plan_up(&inputs(missing), &paths());
        let shown = plan.to_string();
        assert!(!shown.contains("canary-lab-password"), "the password must not show:\n{shown}");
        assert!(shown.contains("debootstrap --variant=minbase"), "{shown}");
        assert!(shown.contains("node.Dockerfile"), "{shown}");
        assert!(shown.contains("npm pack"), "{shown}");
        assert!(shown.contains("htpasswd -niB lab < <NEXUS_PASSWORD> > /lab/htpasswd"), "{shown}");
        let run = shown.find("--name intric-lab-registry").expect("registry started");
        let login = shown.find("login --username lab --password-stdin 127.0.0.1:5000").expect("login");
        let push = shown.find("push --quiet 127.0.0.1:5000/lab/postgres:lab").expect("push");
        assert!(run < login && login < push, "{shown}");
        assert!(!shown.contains("push --quiet 127.0.0.1:5000/lab/registry"), "the registry image is not pushed");
    }

    #[test]
    fn up_runs_exactly_the_commands_it_shows() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let paths = LabPaths { dir: dir.path().to_path_buf() };
        let missing =
            std::iter::once(&REGISTRY_IMAGE).chain(BASE_IMAGES).map(|image| (image, Source::StandIn)).collect();
        let plan = plan_up(&inputs(missing), &paths);
        let runner = crate::plan::runner::Recording::new();
        crate::plan::TaskPlan::execute(&plan, &runner).unwrap();
        runner.assert_ran_as_shown(&plan.to_string());
        let ran = runner.executed();
        assert!(ran.iter().any(|command| command.starts_with("debootstrap ")), "{ran:?}");
        assert!(ran.iter().any(|command| command.ends_with("push --quiet 127.0.0.1:5000/lab/redis:lab")), "{ran:?}");
        let mode = std::fs::metadata(paths.env_file()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the lab's env file holds its password");
    }

    #[test]
    fn base_images_the_lab_registry_holds_are_pulled_back_not_rebuilt() {
        let mut inputs = inputs(BASE_IMAGES.iter().map(|image| (*image, Source::LabRegistry)).collect());
        inputs.new_password = false;
        inputs.registry_running = true;
        inputs.registry_exists = true;
        let shown = plan_up(&inputs, &paths()).to_string();
        for absent in ["debootstrap", "docker build", "docker pull redis"] {
            assert!(!shown.contains(absent), "{absent} in\n{shown}");
        }
        assert!(shown.contains("docker pull --quiet 127.0.0.1:5000/lab/python:lab\n"), "{shown}");
        assert!(shown.contains("docker tag 127.0.0.1:5000/lab/python:lab intric-lab/python:lab"), "{shown}");
    }

    #[test]
    fn second_up_only_logs_in_and_pushes() {
        let mut inputs = inputs(Vec::new());
        inputs.new_password = false;
        inputs.registry_running = true;
        inputs.registry_exists = true;
        inputs.debian_image_present = true;
        let shown = plan_up(&inputs, &paths()).to_string();
        for absent in ["debootstrap", "docker build", "htpasswd", "docker run", "rm --force"] {
            assert!(!shown.contains(absent), "{absent} in\n{shown}");
        }
        assert!(shown.contains("docker push --quiet 127.0.0.1:5000/lab/python:lab"), "{shown}");
    }

    #[test]
    fn another_checkout_adopts_the_running_registry() {
        let mut inputs = inputs(Vec::new());
        inputs.new_password = false;
        inputs.registry_running = true;
        inputs.registry_exists = true;
        inputs.debian_image_present = true;
        inputs.adopted_htpasswd = Some("lab:$2y$05$hash".into());
        let shown = plan_up(&inputs, &paths()).to_string();
        assert!(shown.contains("write /lab/htpasswd (mode 644) from <htpasswd>"), "{shown}");
        assert!(!shown.contains("docker run") && !shown.contains("rm --force"), "the registry stays:\n{shown}");
        assert!(!shown.contains("$2y$"), "{shown}");
    }

    #[test]
    fn upstream_images_are_pulled_and_renamed() {
        let shown = plan_up(&inputs(vec![(BASE_IMAGES[3], Source::Upstream)]), &paths()).to_string();
        assert!(shown.contains("docker pull pgvector/pgvector:pg16"), "{shown}");
        assert!(shown.contains("docker tag pgvector/pgvector:pg16 intric-lab/postgres:lab"), "{shown}");
        assert!(!shown.contains("debootstrap"), "{shown}");
    }

    #[test]
    fn the_debian_mirror_comes_from_apt_sources() {
        let deb822 = "Types: deb\n# comment\nURIs: http://mirror.example/debian\nSuites: bookworm\n\nTypes: deb\nURIs: http://mirror.example/debian-security\n";
        assert_eq!(debian_mirror_in(deb822).as_deref(), Some("http://mirror.example/debian"));
        let one_line =
            "# deb http://old.example/debian bookworm main\ndeb [arch=amd64] http://m.example/debian/ bookworm main\n";
        assert_eq!(debian_mirror_in(one_line).as_deref(), Some("http://m.example/debian"));
        assert_eq!(debian_mirror_in("deb http://m.example/debian-security bookworm-security main\n"), None);
    }

    #[test]
    fn one_up_at_a_time_per_port() {
        let held = lock_machine(59_999).unwrap();
        let path = std::env::temp_dir().join("intric-lab-59999.lock");
        let other = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        assert!(other.try_lock().is_err(), "a second `up` waits while the first holds the lock");
        drop(held);
        other.try_lock().unwrap();
    }

    #[test]
    fn env_prints_exports_a_shell_can_eval_dotenv_and_json() {
        let pairs = [("NEXUS_REGISTRY", "127.0.0.1:5000"), ("ODD", "it's $HOME; `x`")];
        assert_eq!(
            format_env(&pairs, EnvFormat::Shell),
            "export NEXUS_REGISTRY=127.0.0.1:5000\nexport ODD='it'\\''s $HOME; `x`'\n"
        );
        assert_eq!(format_env(&pairs, EnvFormat::Dotenv), "NEXUS_REGISTRY=127.0.0.1:5000\nODD=it's $HOME; `x`\n");
        let json: serde_json::Value = serde_json::from_str(&format_env(&pairs, EnvFormat::Json)).unwrap();
        assert_eq!(json["ODD"], "it's $HOME; `x`");
    }

    #[test]
    fn env_file_names_every_base_image() {
        let text = env_file_text(&inputs(Vec::new()));
        for variable in ["NEXUS_REGISTRY=127.0.0.1:5000", "NEXUS_USERNAME=lab", "NEXUS_PASSWORD=canary-lab-password"] {
            assert!(text.contains(variable), "{text}");
        }
        for image in BASE_IMAGES {
            assert!(text.contains(&format!("{}=127.0.0.1:5000/lab/{}:lab", image.variable, image.name)), "{text}");
        }
    }

    // `up --nexus`; the proxy's other plan tests are in nexus.rs.

    #[test]
    fn with_nexus_the_plan_builds_and_runs_the_proxy_after_the_registry() {
        let mut inputs = inputs(Vec::new());
        inputs.nexus = nexus::tests::wanted(false);
        let shown = plan_up(&inputs, &paths()).to_string();
        assert!(!shown.contains("canary-lab-password"), "the password must not show:\n{shown}");
        let build = shown.find("build --progress plain --file ").expect("the proxy is built");
        assert!(
            shown[build..].starts_with(&format!(
                "build --progress plain --file {}",
                crate::adapters::workspace_root().join("docker/lab/nexus-proxy.Dockerfile").display()
            )),
            "{shown}"
        );
        assert!(
            shown.contains("--tag intric-lab/nexus-proxy:lab --build-arg PYTHON_IMAGE=intric-lab/python:lab"),
            "{shown}"
        );
        assert!(shown.contains("write /lab/nexus-proxy.env (mode 600) from <nexus-proxy.env>"), "{shown}");
        let run = shown
            .find("run --detach --name intric-lab-nexus --restart unless-stopped --network host --env-file /lab/nexus-proxy.env")
            .expect("the proxy runs");
        assert!(
            shown.contains("--label org.intric.lab.nexus-config=f1ngerpr1nt intric-lab/nexus-proxy:lab --listen 127.0.0.1:5001 --upstream 127.0.0.1:5000"),
            "{shown}"
        );
        let registry_login =
            shown.find("login --username lab --password-stdin 127.0.0.1:5000").expect("registry login");
        let proxy_login = shown.find("login --username lab --password-stdin 127.0.0.1:5001").expect("proxy login");
        let registry_run = shown.find("--name intric-lab-registry").expect("registry started");
        assert!(registry_run < registry_login && registry_login < build && run < proxy_login, "{shown}");
        assert!(shown.contains("write /lab/nexus.env (mode 600) from <nexus.env>"), "{shown}");
        assert!(!shown.contains("rm --force intric-lab-nexus"), "no proxy to replace:\n{shown}");
    }

    #[test]
    fn without_nexus_the_plan_has_no_proxy() {
        let shown = plan_up(&inputs(Vec::new()), &paths()).to_string();
        for absent in ["nexus", "5001"] {
            assert!(!shown.contains(absent), "{absent} in\n{shown}");
        }
    }
}
