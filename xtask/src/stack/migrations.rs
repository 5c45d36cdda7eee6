//! Which pending migrations an update without downtime cannot run: while the new containers
//! start, the old version keeps serving against the migrated database, so a migration may only
//! add (expand); one that drops or renames a column or table the old code uses (contract)
//! needs a downtime update (`--allow-downtime`), or a release of its own once no running
//! version uses the old name.
//!
//! The check reads the new backend image's alembic migration files (a one-off container prints
//! them, see [`crate::adapters::compose::Compose::migration_files`]), follows `down_revision`
//! from the heads back to the database's revision, and scans the `upgrade()` of each migration
//! in between for drops and renames. It is a text scan, on purpose simple: it reports what it
//! finds by file and line, so a false alarm is plain to see (and `--allow-downtime` overrides it).

use std::collections::{BTreeMap, BTreeSet};

/// One alembic migration file.
#[derive(Debug, PartialEq, Eq)]
struct Migration {
    revision: String,
    down_revisions: Vec<String>,
    /// The file's lines from `def upgrade` to the next top-level `def` (its downgrade drops
    /// what the upgrade adds, and is never run by an update), with their line numbers.
    upgrade: Vec<(usize, String)>,
}

/// What, in the text of an `upgrade()`, drops or renames a column or table: alembic's
/// operations (also in batch mode) and the same in raw SQL, matched in lowercase.
const CONTRACTING: [&str; 7] =
    ["drop_column(", "drop_table(", "rename_table(", "new_column_name=", "drop column", "drop table", " rename "];

/// The drops and renames in the migrations of `files` (file name → text) that come after the
/// database's `revision` (alembic's `version_num`, comma-separated when there are several
/// heads), as `file:line: code`. Nothing when the files do not know that revision: the
/// database is ahead of this image (a rollback), and it runs no migration.
pub fn contracting_changes(files: &BTreeMap<String, String>, revision: &str) -> Vec<String> {
    let migrations: BTreeMap<&str, Migration> =
        files.iter().filter_map(|(name, text)| Some((name.as_str(), parse(text)?))).collect();
    let by_revision: BTreeMap<&str, &Migration> =
        migrations.values().map(|migration| (migration.revision.as_str(), migration)).collect();
    let current: Vec<&str> = revision.split(',').map(str::trim).filter(|r| !r.is_empty()).collect();
    if current.is_empty() || current.iter().any(|revision| !by_revision.contains_key(revision)) {
        return Vec::new();
    }
    // Everything the database already has: its revisions and all their ancestors.
    let mut applied = BTreeSet::new();
    let mut stack = current;
    while let Some(revision) = stack.pop() {
        if applied.insert(revision)
            && let Some(migration) = by_revision.get(revision)
        {
            stack.extend(migration.down_revisions.iter().map(String::as_str));
        }
    }
    let mut found = Vec::new();
    for (name, migration) in &migrations {
        if applied.contains(migration.revision.as_str()) {
            continue;
        }
        for (number, line) in &migration.upgrade {
            let code = line.split('#').next().unwrap_or_default().to_lowercase().replace(' ', "");
            let sql = line.to_lowercase();
            let hit = CONTRACTING.iter().any(|needle| {
                if needle.contains(' ') { sql.contains(needle) } else { code.contains(&needle.replace(' ', "")) }
            });
            if hit {
                found.push(format!("{name}:{number}: {}", line.trim()));
            }
        }
    }
    found
}

/// The revision, parents and upgrade of a migration file; `None` for a file without a
/// `revision` (a helper module beside the migrations).
fn parse(text: &str) -> Option<Migration> {
    let quoted =
        |line: &str| -> Vec<String> { line.split(['"', '\'']).skip(1).step_by(2).map(str::to_string).collect() };
    let assignment = |name: &str| {
        text.lines().find(|line| line.strip_prefix(name).is_some_and(|rest| rest.trim_start().starts_with(['=', ':'])))
    };
    let revision = quoted(assignment("revision")?).into_iter().next()?;
    let down_revisions = assignment("down_revision").map(quoted).unwrap_or_default();
    let mut upgrade = Vec::new();
    let mut inside = false;
    for (index, line) in text.lines().enumerate() {
        if line.starts_with("def ") {
            inside = line.starts_with("def upgrade");
        } else if inside {
            upgrade.push((index + 1, line.to_string()));
        }
    }
    Some(Migration { revision, down_revisions, upgrade })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INITIAL: &str = r#""""initial

Revision ID: 0001
"""
from alembic import op
import sqlalchemy as sa

revision: str = "0001"
down_revision: Union[str, None] = None


def upgrade() -> None:
    op.create_table("jobs", sa.Column("id", sa.Integer()))
    op.create_table("tenants", sa.Column("name", sa.Text()))


def downgrade() -> None:
    op.drop_table("tenants")
    op.drop_table("jobs")
"#;

    const ADD_COLUMN: &str = r#"revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("note", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "note")
"#;

    const RENAME: &str = r#"revision = '0003'
down_revision = '0002'


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.alter_column(
            "note",
            new_column_name="remark",
        )
    op.execute("ALTER TABLE tenants RENAME TO organisations")


def downgrade() -> None:
    pass
"#;

    const DROP: &str = r#"revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.drop_column("jobs", "remark")  # contract: no running version reads it any more
"#;

    fn files(texts: &[(&str, &str)]) -> BTreeMap<String, String> {
        texts.iter().map(|(name, text)| (name.to_string(), text.to_string())).collect()
    }

    #[test]
    fn adding_is_safe_and_the_downgrade_is_not_read() {
        let files = files(&[("0001_initial.py", INITIAL), ("0002_note.py", ADD_COLUMN)]);
        assert_eq!(contracting_changes(&files, "0001"), Vec::<String>::new());
    }

    #[test]
    fn renames_and_drops_after_the_database_revision_are_reported_by_file_and_line() {
        let all = files(&[("0001_initial.py", INITIAL), ("0002_note.py", ADD_COLUMN), ("0003_rename.py", RENAME)]);
        assert_eq!(
            contracting_changes(&all, "0001"),
            [
                "0003_rename.py:9: new_column_name=\"remark\",",
                "0003_rename.py:11: op.execute(\"ALTER TABLE tenants RENAME TO organisations\")"
            ]
        );
        let with_drop = files(&[("0003_rename.py", RENAME), ("0004_drop.py", DROP), ("0002_note.py", ADD_COLUMN)]);
        assert_eq!(
            contracting_changes(&with_drop, "0003"),
            ["0004_drop.py:6: op.drop_column(\"jobs\", \"remark\")  # contract: no running version reads it any more"]
        );
    }

    #[test]
    fn applied_migrations_and_unknown_revisions_report_nothing() {
        let all = files(&[("0002_note.py", ADD_COLUMN), ("0003_rename.py", RENAME), ("0004_drop.py", DROP)]);
        assert!(contracting_changes(&all, "0004").is_empty(), "everything is applied");
        assert!(contracting_changes(&all, "0009").is_empty(), "the database is ahead of this image");
        assert!(contracting_changes(&all, "").is_empty(), "an empty alembic_version");
        let helper = files(&[("__init__.py", "import os\n"), ("0004_drop.py", DROP), ("0003_rename.py", RENAME)]);
        assert_eq!(contracting_changes(&helper, "0003").len(), 1);
    }
}
