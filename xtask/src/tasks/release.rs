//! `cargo xtask release`: promotes HEAD's tested images to a release version and tags the
//! commit (the planning and promotion are `images::release`, shared with ci). It prepares the
//! release plan and shows it, or with `--execute` runs it, through `plan::show_or_run`.

use anyhow::{Result, bail};
use clap::Args;

use crate::adapters::ci_env;
use crate::images::location::Location;
use crate::images::release::{Bump, Options, Requested, TagMode, prepare};
use crate::plan::runner::Processes;
use crate::plan::show_or_run;

// Options of `cargo xtask release`.
#[derive(Args)]
#[command(after_help = "\
A dry run unless --execute: it prints the git tag to create, the images to promote, the tags to add
and the release notes. Refused, with every reason listed, unless: the version is valid semver and
above every release of its X.Y line (a new line must be above every stable release; pre-releases of a
version come before it, in order); git has no tag of the version yet, and the registry has it on no
other image than HEAD's; the working tree is clean; HEAD is on the default branch or an
--allow-branch; and the registry, which must answer, holds HEAD's images as sha-<12 hex> (pushed by
the main stage), unless --build.

--execute first takes the release lock on origin (the tag release-lock, pushed with
--force-with-lease so that of two releases at once only one gets it; the other is refused, naming the
holder, before any tag moves). Under the lock it reads the registry and origin's release tags again
and plans again, then puts every image's version tag first, then the floating tags, then tags git
and pushes vX.Y.Z to origin, then releases the lock. Tags already on HEAD's images are left alone,
so a release cut off part-way is finished by running it again. A lock left by a release
interrupted on this machine (its process gone) is taken over; one from another machine is refused,
saying whose and since when, until --break-lock. A repository without origin: --no-lock.
Floating tags that must move from another image are checked first: where the repository does not
allow redeploy (Nexus), the release is refused before any write, naming them, unless
--skip-immutable-floating leaves them where they are.

--bump starts from the highest release tag in git or the registry: major, minor and patch step the highest stable
release (1.4.2 -> 2.0.0, 1.5.0, 1.4.3); rc continues the highest release if it is an rc
(1.5.0-rc.1 -> 1.5.0-rc.2) and otherwise starts the next patch's (1.4.2 -> 1.4.3-rc.1). For the
first rc of a minor or major release, name it: `release 1.5.0-rc.1`.

The images are those the compose file builds (its services with a build: section). The registry
comes from --registry or NEXUS_REGISTRY; NEXUS_USERNAME and NEXUS_PASSWORD log in
(else the docker login).

--to-registry (or NEXUS_RELEASE_REGISTRY) promotes into a separate release repository, such as a
Nexus hosted repository with redeploy disabled: HEAD's sha- images are read from --registry, their
blobs mounted into the release repository (same registry) or copied (another registry, or where the
mount is refused), and the same manifests tagged there; the release tags are judged there. Its
login is NEXUS_RELEASE_USERNAME and NEXUS_RELEASE_PASSWORD if set, else as for --registry.

Examples:
  cargo xtask release 1.4.0
  cargo xtask release 1.4.0 --execute --push-tag
  cargo xtask release --bump rc --execute
  cargo xtask release 1.3.5 --allow-branch 'release/*' --execute --json
  cargo xtask release 1.4.0 --registry nexus.example/dev --to-registry nexus.example/release --execute")]
pub struct ReleaseArgs {
    /// The version to release: X.Y.Z or vX.Y.Z, with an optional pre-release (1.5.0-rc.1).
    // Not called `version`: that id is clap's own `--version`.
    #[arg(value_name = "VERSION", required_unless_present = "bump", conflicts_with = "bump")]
    pub target: Option<String>,
    /// Release the next version after the highest release instead of naming one.
    #[arg(long, value_enum)]
    pub bump: Option<Bump>,
    /// Do it: promote the images and create the git tag. Without it, only print the plan.
    #[arg(long)]
    pub execute: bool,
    /// Push the new git tag to `origin` (with --execute). Under the release lock it always is;
    /// this is for --no-lock.
    #[arg(long)]
    pub push_tag: bool,
    /// Release without the release lock on origin: for a repository without origin, when no
    /// other release can run against this registry at the same time.
    #[arg(long, conflicts_with = "break_lock")]
    pub no_lock: bool,
    /// Take the release lock even when another release holds it: for a lock left behind by a
    /// release killed on another machine (the refusal names it), once you know it no longer
    /// runs. One interrupted on this machine is taken over without it.
    #[arg(long)]
    pub break_lock: bool,
    /// Also allow releasing from branches matching GLOB (`*` matches any characters, `/`
    /// included); repeatable [default: only the default branch].
    #[arg(long = "allow-branch", value_name = "GLOB")]
    pub allow_branches: Vec<String>,
    /// Build and push HEAD's images first when the registry lacks them.
    #[arg(long)]
    pub build: bool,
    /// Leave the floating tags (X.Y, X, latest) that the repository does not allow to move
    /// (Nexus: redeploy disabled) where they are, instead of refusing the release.
    #[arg(long)]
    pub skip_immutable_floating: bool,
    /// Promote into this release registry instead of tagging in --registry (blobs mounted or
    /// copied, same digests) [default: $NEXUS_RELEASE_REGISTRY].
    #[arg(long, value_name = "HOST[:PORT][/PATH]")]
    pub to_registry: Option<String>,
    /// Print the result (version, git tag, revision, images with digest and tags) as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub location: Location,
}

/// `cargo xtask release`.
pub fn run(args: ReleaseArgs) -> Result<()> {
    let env = ci_env::process_env();
    let requested = match (&args.target, args.bump) {
        (Some(version), _) => Requested::Version(version.clone()),
        (None, Some(bump)) => Requested::Bump(bump),
        (None, None) => bail!("name the VERSION to release, or pass --bump major|minor|patch|rc"),
    };
    let options = Options {
        repo: args.location.repo(),
        registry: args.location.registry,
        to_registry: args.to_registry,
        requested,
        mode: TagMode::Create,
        allow_branches: args.allow_branches,
        build: args.build,
        execute: args.execute,
        push_tag: args.push_tag,
        skip_immutable_floating: args.skip_immutable_floating,
        quiet: args.json,
        no_lock: args.no_lock,
        break_lock: args.break_lock,
    };
    let runner = Processes::new();
    let plan = prepare(&runner, &options, &env)?;
    if args.json && !args.execute {
        // Standard output is the JSON's alone, so the plan goes to standard error.
        eprint!("{plan}");
        println!("{}", plan.outcome(false).to_json());
        return Ok(());
    }
    match show_or_run(&plan, !args.execute, &runner)? {
        Some(outcome) if args.json => println!("{}", outcome.to_json()),
        Some(outcome) => print!("{outcome}"),
        None => {}
    }
    Ok(())
}
