//! The Docker Swarm adapter: the argv of every `docker stack`, `docker service`, `docker node`
//! and one-off `docker run`/`docker exec` command that `--swarm` runs against a stack. They
//! decide nothing; `stack::swarm` decides what runs when.
//!
//! No secret is ever in an argv: `docker stack deploy` reads the stack file and `docker run`
//! its `--env-file`, both written mode 0600 by the caller.

use std::path::Path;

use crate::adapters::compose::Compose;
use crate::plan::Command;

/// The node label that db and redis are pinned to (`node.labels.intric.data == true`).
pub const DATA_LABEL: &str = "intric.data";

/// A swarm stack: its name and the docker client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stack {
    pub program: String,
    pub name: String,
}

impl Stack {
    /// The stack a deployment's compose project runs as on swarm: the same name (so the two
    /// name their volumes alike) and the same docker client.
    pub fn of(compose: &Compose) -> Stack {
        Stack { program: compose.program.clone(), name: compose.project_name().to_string() }
    }

    fn docker<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Command::new(&self.program).args(args)
    }

    /// The swarm's service name of `service`.
    pub fn service(&self, service: &str) -> String {
        format!("{}_{service}", self.name)
    }

    /// The stack's overlay network (attachable, so one-off containers can join it).
    pub fn network(&self) -> String {
        format!("{}_swarm", self.name)
    }

    /// Prints `LocalNodeState ControlAvailable NodeID`: `active true ID` on a swarm manager.
    pub fn swarm_state(&self) -> Command {
        self.docker(["info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} {{.Swarm.NodeID}}"])
    }

    /// The IDs of the nodes labelled `intric.data=true`.
    pub fn data_nodes(&self) -> Command {
        self.docker(["node", "ls", "--quiet", "--filter"]).arg(format!("node.label={DATA_LABEL}=true"))
    }

    /// Labels node `id` as the one db and redis run on.
    pub fn label_data_node(&self, id: &str) -> Command {
        self.docker(["node", "update", "--label-add"]).arg(format!("{DATA_LABEL}=true")).arg(id)
    }

    /// Creates or updates the stack's services from `file`, with the registry login sent to the
    /// nodes and each tag resolved to its digest once, so every task runs the same image.
    pub fn deploy(&self, file: &Path) -> Command {
        self.docker(["stack", "deploy", "--with-registry-auth", "--resolve-image", "always", "--compose-file"])
            .arg(file.display().to_string())
            .arg(&self.name)
            .hint("`docker stack deploy` refused the stack file: its message above says which part")
    }

    /// Per service: name, image, desired replicas and the update's state and start
    /// (`-` without an update), one line each.
    pub fn services_state(&self, services: &[String]) -> Command {
        self.docker([
            "service",
            "inspect",
            "--format",
            "{{.Spec.Name}} {{.Spec.TaskTemplate.ContainerSpec.Image}} \
             {{if .Spec.Mode.Replicated}}{{.Spec.Mode.Replicated.Replicas}}{{else}}1{{end}} \
             {{if .UpdateStatus}}{{.UpdateStatus.State}} {{.UpdateStatus.StartedAt.Unix}}{{else}}- 0{{end}}",
        ])
        .args(services.iter().map(|service| self.service(service)))
    }

    /// The tasks of `services` meant to run: ID, service, image, current state (a sentence:
    /// `Running 5 seconds ago`), one JSON object per line.
    pub fn running_tasks(&self, services: &[String]) -> Command {
        self.docker(["service", "ps", "--no-trunc", "--filter", "desired-state=running", "--format", "{{json .}}"])
            .args(services.iter().map(|service| self.service(service)))
    }

    /// The desired replicas of `service` (fails when it does not exist).
    pub fn replicas_of(&self, service: &str) -> Command {
        self.docker(["service", "inspect", "--format", "{{.Spec.Mode.Replicated.Replicas}}"]).arg(self.service(service))
    }

    /// `docker service scale` of the stack's services to their counts. With `wait` it returns
    /// once their tasks converged: scaled to 0, once their containers have stopped.
    pub fn scale(&self, counts: &[(String, usize)], wait: bool) -> Command {
        let detach = if wait { "--detach=false" } else { "--detach" };
        self.docker(["service", "scale", detach])
            .args(counts.iter().map(|(service, count)| format!("{}={count}", self.service(service))))
    }

    /// The stack's services, one JSON object per line (name, mode, replicas, image).
    pub fn services_json(&self) -> Command {
        self.docker(["stack", "services", "--format", "{{json .}}"]).arg(&self.name)
    }

    /// The IDs of the stack's containers on this engine, running or not, one per line.
    pub fn containers(&self) -> Command {
        self.docker(["ps", "--all", "--quiet", "--filter"])
            .arg(format!("label=com.docker.stack.namespace={}", self.name))
    }

    /// The running container of `service`'s task on this engine.
    pub fn container_of(&self, service: &str) -> Command {
        self.docker(["ps", "--quiet", "--filter", "status=running", "--filter"])
            .arg(format!("label=com.docker.swarm.service.name={}", self.service(service)))
    }

    /// `args` run inside container `id`, standard input attached (for a dump's load).
    pub fn exec<I, S>(&self, id: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.docker(["exec", "-i"]).arg(id).args(args)
    }

    /// `args` run once in a new container of `image` on the stack's network, with the
    /// environment of `env_file`, removed when it exits.
    pub fn run_once<I, S>(&self, image: &str, env_file: &Path, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.docker(["run", "--rm", "--network"])
            .arg(self.network())
            .arg("--env-file")
            .arg(env_file.display().to_string())
            .arg(image)
            .args(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_name_the_stack_and_carry_no_secret() {
        let stack = Stack { program: "docker".into(), name: "intric".into() };
        assert_eq!(
            stack.deploy(Path::new("/srv/intric/.swarm/stack.json")).to_string(),
            "docker stack deploy --with-registry-auth --resolve-image always --compose-file \
             /srv/intric/.swarm/stack.json intric"
        );
        assert_eq!(
            stack.run_once("r/intric/backend:1", Path::new("/e"), ["alembic", "upgrade", "head"]).to_string(),
            "docker run --rm --network intric_swarm --env-file /e r/intric/backend:1 alembic upgrade head"
        );
        assert_eq!(stack.label_data_node("n1").to_string(), "docker node update --label-add intric.data=true n1");
        assert!(stack.container_of("db").to_string().ends_with("label=com.docker.swarm.service.name=intric_db"));
    }
}
