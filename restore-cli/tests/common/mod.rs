//! Test helpers: the real services started by scripts/test-services.sh, the two binaries,
//! the stock `mariadb` and `gpg` clients.
#![allow(dead_code)]

pub mod daemon;
pub mod pitr;
pub mod private;
pub mod receivers;
pub mod s3;
pub mod transfers;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

pub const ADMIN_USER: &str = "test_admin";

/// One private MariaDB instance of the test services.
#[derive(Clone, Debug)]
pub struct Server {
    pub port: u16,
    pub password: String,
}

pub fn env_file() -> BTreeMap<String, String> {
    let dir = std::env::var("BA_TEST_DIR").unwrap_or_else(|_| "/var/tmp/backup-agent-test".into());
    let text = std::fs::read_to_string(Path::new(&dir).join("env")).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn server(port_key: &str, default_port: u16) -> Server {
    let e = env_file();
    let port = std::env::var(port_key)
        .ok()
        .or_else(|| e.get(port_key).cloned())
        .and_then(|p| p.parse().ok())
        .unwrap_or(default_port);
    let password = e
        .get("BA_ADMIN_PASSWORD")
        .cloned()
        .unwrap_or_else(|| "test".into());
    let s = Server { port, password };
    let ping = s.client().arg("-e").arg("SELECT 1").output();
    match ping {
        Ok(o) if o.status.success() => s,
        _ => panic!(
            "the test MariaDB on 127.0.0.1:{port} does not answer; start the test services with `scripts/test-services.sh up` (README: test command)"
        ),
    }
}

/// The server that gets backed up (binlog on).
pub fn source() -> Server {
    server("BA_SRC_PORT", 33061)
}

/// The server restores go to.
pub fn target() -> Server {
    server("BA_DST_PORT", 33062)
}

impl Server {
    pub fn client(&self) -> Command {
        let mut c = Command::new("mariadb");
        c.args([
            "--protocol=tcp",
            "-h",
            "127.0.0.1",
            "-P",
            &self.port.to_string(),
            "-u",
            ADMIN_USER,
            "--max-allowed-packet=256M",
            "--batch",
            "--raw",
            "--skip-column-names",
        ]);
        c.env("MYSQL_PWD", &self.password);
        c
    }

    /// Runs SQL; panics with the server's message on failure.
    pub fn sql(&self, sql: &str) -> String {
        self.run_sql(None, sql)
    }

    /// Runs SQL with `db` as the default database.
    pub fn sql_db(&self, db: &str, sql: &str) -> String {
        self.run_sql(Some(db), sql)
    }

    fn run_sql(&self, db: Option<&str>, sql: &str) -> String {
        let mut c = self.client();
        if let Some(d) = db {
            c.arg(d);
        }
        let o = c.arg("-e").arg(sql).output().expect("run mariadb client");
        assert!(
            o.status.success(),
            "SQL failed on port {} db {db:?}: {sql}\n{}",
            self.port,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Loads a SQL file with the stock client.
    pub fn load_file(&self, db: Option<&str>, file: &Path) -> Output {
        let mut c = self.client();
        if let Some(d) = db {
            c.arg(d);
        }
        c.stdin(std::fs::File::open(file).expect("open sql"))
            .output()
            .expect("run mariadb client")
    }

    pub fn databases(&self) -> Vec<String> {
        self.sql("SHOW DATABASES")
            .lines()
            .map(String::from)
            .collect()
    }

    pub fn drop_db(&self, db: &str) {
        self.sql(&format!("DROP DATABASE IF EXISTS `{db}`"));
    }

    /// Creates each database anew (dropped first), with `sql` run in it.
    pub fn fresh_dbs(&self, dbs: &[&String], sql: &str) {
        for d in dbs {
            self.drop_db(d);
            self.sql(&format!("CREATE DATABASE `{d}`"));
            self.sql_db(d, sql);
        }
    }

    /// A least-privilege dump account (as documented) with the given password.
    pub fn dump_user(&self, user: &str, password: &str) {
        for host in ["127.0.0.1", "localhost"] {
            self.sql(&format!(
                "CREATE OR REPLACE USER '{user}'@'{host}' IDENTIFIED BY '{password}'; \
                 GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES, RELOAD, BINLOG MONITOR ON *.* TO '{user}'@'{host}'"
            ));
        }
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this test process and call.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn testdata(name: &str) -> PathBuf {
    repo_root().join("testdata").join(name)
}

pub fn restore_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_restore"))
}

/// The backup-agent binary, built beside `restore` in the same target directory.
pub fn agent_bin() -> PathBuf {
    let p = restore_bin().with_file_name("backup-agent");
    assert!(
        p.exists(),
        "{} is missing; build the workspace (cargo build --workspace)",
        p.display()
    );
    p
}

/// A throwaway GnuPG home with helpers around the real `gpg`.
pub struct Gpg {
    pub home: tempfile::TempDir,
}

impl Gpg {
    pub fn new() -> Gpg {
        let home = tempfile::Builder::new()
            .prefix("gnupg")
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(
            home.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        Gpg { home }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", self.home.path()).args([
            "--batch",
            "--no-tty",
            "--trust-model",
            "always",
        ]);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run gpg")
    }

    /// Generates a key; `kind` is "rsa4096" or "ed25519". Returns its fingerprint.
    pub fn gen_key(
        &self,
        email: &str,
        kind: &str,
        passphrase: Option<&str>,
        expire: &str,
    ) -> String {
        let algo = match kind {
            "rsa4096" => "Key-Type: RSA\nKey-Length: 4096\nSubkey-Type: RSA\nSubkey-Length: 4096\n"
                .to_string(),
            "ed25519" => {
                "Key-Type: eddsa\nKey-Curve: ed25519\nSubkey-Type: ecdh\nSubkey-Curve: cv25519\n"
                    .to_string()
            }
            "sign-only" => "Key-Type: eddsa\nKey-Curve: ed25519\n".to_string(),
            other => panic!("unknown key kind {other}"),
        };
        let sub_usage = if kind == "sign-only" {
            ""
        } else {
            "Subkey-Usage: encrypt\n"
        };
        let prot = match passphrase {
            Some(p) => format!("Passphrase: {p}\n"),
            None => "%no-protection\n".into(),
        };
        let params = format!(
            "{algo}{prot}Key-Usage: sign,cert\n{sub_usage}Name-Real: THROWAWAY test {email}\nName-Email: {email}\nExpire-Date: {expire}\n%commit\n"
        );
        let pf = self.home.path().join(format!("params-{email}"));
        std::fs::write(&pf, params).unwrap();
        let o = self
            .cmd()
            .args(["--pinentry-mode", "loopback", "--gen-key"])
            .arg(&pf)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "gpg --gen-key: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        self.fingerprint(email)
    }

    pub fn fingerprint(&self, email: &str) -> String {
        let o = self.run(&["--with-colons", "--list-keys", email]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .find(|l| l.starts_with("fpr:"))
            .map(|l| l.split(':').nth(9).unwrap().to_string())
            .expect("fingerprint")
    }

    pub fn export_public(&self, email: &str, to: &Path) {
        let o = self.run(&["--armor", "--export", email]);
        assert!(o.status.success() && !o.stdout.is_empty());
        std::fs::write(to, o.stdout).unwrap();
    }

    pub fn export_secret(&self, email: &str, passphrase: Option<&str>, to: &Path) {
        let mut c = self.cmd();
        c.args(["--pinentry-mode", "loopback", "--armor"]);
        if let Some(p) = passphrase {
            c.args(["--passphrase", p]);
        }
        let o = c.args(["--export-secret-keys", email]).output().unwrap();
        assert!(
            o.status.success() && !o.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::fs::write(to, o.stdout).unwrap();
    }

    pub fn import(&self, file: &Path) {
        let o = self.cmd().arg("--import").arg(file).output().unwrap();
        assert!(
            o.status.success(),
            "gpg --import: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

/// A scratch directory with a config for one source and one local store.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub db: String,
    pub dump_user: String,
    pub dump_password: String,
    pub dpo_certs: Vec<PathBuf>,
    pub signing_key: PathBuf,
    pub signing_passphrase: Option<String>,
    /// Extra lines in the [[source]] table.
    pub extra: String,
    /// Extra lines in the [agent] table.
    pub agent_extra: String,
    /// Extra tables at the end (e.g. [alerts]).
    pub tail: String,
    /// More [[store]] tables after the local one.
    pub stores: String,
    /// The [policy] table (default: one verified copy is enough, for single-store tests).
    pub policy: String,
    /// Replaces the source's `host`/`port` lines (e.g. a `nodes = [...]` list).
    pub source_addr: Option<String>,
    /// The agent's site.
    pub site: String,
}

impl Setup {
    /// Default keys: the throwaway ones in testdata/.
    pub fn new(src: &Server, db: &str) -> Setup {
        let dir = tempfile::Builder::new()
            .prefix("ba-test")
            .tempdir()
            .unwrap();
        let dump_user = unique("dumper");
        let dump_password = format!("pw-{}", unique("x"));
        src.dump_user(&dump_user, &dump_password);
        std::fs::create_dir_all(dir.path().join("store")).unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        Setup {
            dir,
            db: db.to_string(),
            dump_user,
            dump_password,
            dpo_certs: vec![testdata("dpo.pub.asc")],
            signing_key: testdata("agent.sec.asc"),
            signing_passphrase: None,
            extra: String::new(),
            agent_extra: String::new(),
            tail: String::new(),
            stores: String::new(),
            policy: "[policy]\ncopies = 1\nmedia = 1\noffsite = 0\n".into(),
            source_addr: None,
            site: "dc1".into(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn store(&self) -> PathBuf {
        self.path("store")
    }

    pub fn config(&self, src: &Server) -> PathBuf {
        std::fs::write(
            self.path("db.password"),
            format!("{}\n", self.dump_password),
        )
        .unwrap();
        let pass_line = match &self.signing_passphrase {
            Some(p) => {
                std::fs::write(self.path("agent.pass"), p).unwrap();
                format!(
                    "signing_key_passphrase_file = {:?}\n",
                    self.path("agent.pass")
                )
            }
            None => String::new(),
        };
        let certs: Vec<String> = self.dpo_certs.iter().map(|c| format!("{c:?}")).collect();
        let cfg = format!(
            r#"[agent]
site = "{site}"
state_dir = {state:?}
{agent_extra}

[[source]]
name = "main"
{addr}
user = "{user}"
password_file = {pw:?}
databases = {{ include = ["{db}"] }}
{extra}
[encryption]
dpo_certificates = [{certs}]
signing_key_file = {key:?}
{pass_line}
[[store]]
name = "local"
kind = "local"
path = {store:?}
media = "disk"
{stores}
{policy}
{tail}
"#,
            state = self.path("state"),
            site = self.site,
            addr = self
                .source_addr
                .clone()
                .unwrap_or_else(|| format!("host = \"127.0.0.1\"\nport = {}", src.port)),
            user = self.dump_user,
            pw = self.path("db.password"),
            db = self.db,
            extra = self.extra,
            certs = certs.join(", "),
            key = self.signing_key,
            store = self.store(),
            agent_extra = self.agent_extra,
            tail = self.tail,
            stores = self.stores,
            policy = self.policy,
        );
        let p = self.path("config.toml");
        std::fs::write(&p, cfg).unwrap();
        p
    }

    /// Alerts to `hook`'s webhook (its URL in a file, no retry), as the config's tail.
    pub fn webhook_to(&mut self, hook: &receivers::Receiver) {
        std::fs::write(
            self.path("webhook.url"),
            format!("http://127.0.0.1:{}/hook", hook.port),
        )
        .unwrap();
        self.tail = format!(
            "[alerts]\n[alerts.webhook]\nurl_file = {:?}\nretries = 0\n",
            self.path("webhook.url")
        );
    }

    /// Runs `backup-agent --config ... ARGS`.
    pub fn agent(&self, src: &Server, args: &[&str]) -> Output {
        let cfg = self.config(src);
        Command::new(agent_bin())
            .arg("--config")
            .arg(cfg)
            .args(args)
            .env("TMPDIR", self.path("state"))
            .stdin(Stdio::null())
            .output()
            .expect("run backup-agent")
    }

    /// All files in the store, recursively (relative names).
    pub fn store_files(&self) -> Vec<String> {
        let mut v = Vec::new();
        walk(&self.store(), &self.store(), &mut v);
        v.sort();
        v
    }

    /// The data object of the only backup in the store.
    pub fn only_backup(&self) -> PathBuf {
        let data: Vec<String> = self
            .store_files()
            .into_iter()
            .filter(|f| f.ends_with(".sql.gz.gpg"))
            .collect();
        assert_eq!(
            data.len(),
            1,
            "expected one backup, store has {:?}",
            self.store_files()
        );
        self.store().join(&data[0])
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
}

pub fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({:?})\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `restore` with the throwaway DPO key and agent certificate unless `args` say otherwise.
pub fn restore<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(restore_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run restore")
}

/// `restore --decrypt DATA -o OUT` with the secret key `key` and the agent certificate(s)
/// in `agents` (OUT removed first).
pub fn restore_decrypt(data: &Path, key: &Path, agents: &Path, out: &Path) -> Output {
    let _ = std::fs::remove_file(out);
    restore(&[
        "--decrypt".to_string(),
        data.display().to_string(),
        "-o".into(),
        out.display().to_string(),
        "--dpo-key".into(),
        key.display().to_string(),
        "--agent-cert".into(),
        agents.display().to_string(),
    ])
}

/// Arguments for `restore --into` the target server with the throwaway keys.
pub fn into_args(dst: &Server, data: &Path, password_file: &Path) -> Vec<String> {
    std::fs::write(password_file, &dst.password).unwrap();
    let mut v = vec![
        "--into".into(),
        format!("mysql://{ADMIN_USER}@127.0.0.1:{}/", dst.port),
        "--backup".into(),
        data.display().to_string(),
        "--password-file".into(),
        password_file.display().to_string(),
    ];
    v.extend(key_args());
    v
}

/// The throwaway DPO secret key and agent certificate, as `restore` arguments.
pub fn key_args() -> Vec<String> {
    vec![
        "--dpo-key".into(),
        testdata("dpo.sec.asc").display().to_string(),
        "--agent-cert".into(),
        testdata("agent.pub.asc").display().to_string(),
    ]
}

/// Arguments naming `dst` the drill's scratch server (its admin password written to
/// `password_file`).
pub fn scratch_args(dst: &Server, password_file: &Path) -> Vec<String> {
    std::fs::write(password_file, &dst.password).unwrap();
    vec![
        "--scratch".into(),
        format!("mysql://{ADMIN_USER}@127.0.0.1:{}/", dst.port),
        "--scratch-password-file".into(),
        password_file.display().to_string(),
    ]
}

/// Table fingerprints of a database: CHECKSUM TABLE and row count for every base table
/// (for system-versioned tables, a checksum over the current rows' visible columns, since
/// history and period columns are not dumped), and SHOW CREATE of every view, routine,
/// trigger and event.
pub fn fingerprint(s: &Server, db: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let tables = s.sql(&format!(
        "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA='{db}' AND TABLE_TYPE IN ('BASE TABLE','SYSTEM VERSIONED')"
    ));
    for l in tables.lines() {
        let (t, ty) = l.split_once('\t').unwrap();
        let q = format!("`{}`", t.replace('`', "``"));
        let sum = if ty == "SYSTEM VERSIONED" {
            s.sql_db(
                db,
                &format!("SELECT COUNT(*), SUM(CRC32(CONCAT_WS('|', id, v))) FROM {q}"),
            )
        } else {
            s.sql_db(
                db,
                &format!("CHECKSUM TABLE {q} EXTENDED; SELECT COUNT(*) FROM {q}"),
            )
        };
        m.insert(format!("table {t}"), sum);
    }
    let objs = [
        ("VIEW", format!("SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA='{db}'")),
        ("PROCEDURE", format!("SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA='{db}' AND ROUTINE_TYPE='PROCEDURE'")),
        ("FUNCTION", format!("SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA='{db}' AND ROUTINE_TYPE='FUNCTION'")),
        ("TRIGGER", format!("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA='{db}'")),
        ("EVENT", format!("SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA='{db}'")),
        ("SEQUENCE", format!("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA='{db}' AND TABLE_TYPE='SEQUENCE'")),
    ];
    for (kind, q) in objs {
        for name in s.sql(&q).lines() {
            let mut out = s.sql_db(
                db,
                &format!("SHOW CREATE {kind} `{}`", name.replace('`', "``")),
            );
            if kind == "TRIGGER" {
                // The last column is the creation time, which a restore cannot keep.
                out = out
                    .lines()
                    .map(|l| l.rsplit_once('\t').map(|x| x.0).unwrap_or(l).to_string())
                    .collect::<Vec<_>>()
                    .join("\n");
            }
            m.insert(format!("{kind} {name}"), out);
        }
    }
    m
}

/// Loads testdata/schema.sql into a fresh database `db` on `s`.
pub fn load_schema(s: &Server, db: &str) {
    s.drop_db(db);
    s.sql(&format!(
        "CREATE DATABASE `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
    ));
    let o = s.load_file(Some(db), &testdata("schema.sql"));
    ok(&o, "loading testdata/schema.sql");
}

pub fn assert_same(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "different objects"
    );
    for (k, v) in a {
        assert_eq!(v, &b[k], "{k} differs between source and restored copy");
    }
}

/// Seals `input` with the real gpg as the agent would (AES-256, no compression, to the
/// throwaway DPO), signed by `sign_as` if given.
pub fn gpg_seal(g: &Gpg, input: &Path, sign_as: Option<&str>, out: &Path) {
    let mut c = g.cmd();
    c.args([
        "--yes",
        "--compress-algo",
        "none",
        "--cipher-algo",
        "AES256",
        "--recipient",
        "dpo@backup-agent.invalid",
    ]);
    if let Some(s) = sign_as {
        c.args(["--local-user", s, "--sign"]);
    }
    let o = c
        .arg("--encrypt")
        .arg("--output")
        .arg(out)
        .arg(input)
        .output()
        .unwrap();
    ok(&o, "gpg --encrypt");
}

/// The agent's sealing keys (the throwaway ones in testdata/): to forge what only the
/// agent can sign, as an attacker holding its key would.
pub fn agent_sealing_keys() -> backup_agent::seal::crypto::SealingKeys {
    use backup_core::config::{ConfigPath, EncryptionConfig};
    backup_agent::seal::crypto::SealingKeys::load(&EncryptionConfig {
        dpo_certificates: vec![ConfigPath {
            path: testdata("dpo.pub.asc"),
            key: "dpo".into(),
            position: None,
        }],
        signing_key_file: ConfigPath {
            path: testdata("agent.sec.asc"),
            key: "agent".into(),
            position: None,
        },
        signing_key_passphrase_file: None,
        peer_certificates: vec![],
        compression_level: 6,
        compression_threads: 1,
    })
    .unwrap()
}

/// Writes `<data>.sha256` beside a data file with the real sha256sum.
pub fn write_sha256(data: &Path) {
    let name = data.file_name().unwrap();
    let o = Command::new("sha256sum")
        .arg(name)
        .current_dir(data.parent().unwrap())
        .output()
        .unwrap();
    ok(&o, "sha256sum");
    std::fs::write(format!("{}.sha256", data.display()), o.stdout).unwrap();
}
