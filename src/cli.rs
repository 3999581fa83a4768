//! The command line of CONTRACT §1: `serve`, `migrate`, `user …`, `site …`, `config check`,
//! `backup`, `restore`.
//!
//! Exit codes: 0 success, 1 failure (message on stderr), 2 usage error — clap's own errors
//! and values that cannot be right whatever the database holds (a malformed email, `--raits 0`).

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::app::{self, AppState};
use crate::billing::{self, ledger};
use crate::config::{self, Config, Flags, ProcessEnv, SETTINGS, Source};
use crate::db::{self, Db, migrate};
use crate::{legacy, server, telemetry, users};

#[derive(Parser, Debug)]
#[command(
    name = "easy-writer",
    version,
    about = "Self-hosted backend for an AI writing assistant"
)]
pub struct Cli {
    /// Configuration file (default: $EASY_WRITER_CONFIG, else ./easy-writer.toml when present).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Migrate the database if needed, then serve HTTP and WebSocket.
    Serve {
        /// Listen address (default 127.0.0.1:8000).
        #[arg(long, value_name = "ADDR")]
        bind: Option<String>,
    },
    /// Apply pending database migrations.
    Migrate {
        /// List applied and pending migrations instead.
        #[arg(long)]
        status: bool,
    },
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage WordPress sites (the plugin API).
    #[command(subcommand)]
    Site(SiteCommand),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Validate the prompt files.
    #[command(subcommand)]
    Tools(ToolsCommand),
    /// Check the configured AI providers with one cheap real call each.
    #[command(subcommand)]
    Providers(ProvidersCommand),
    /// Write a consistent copy of the database, also while the server runs.
    Backup {
        /// Destination file; must not exist yet. Created 0600 (it holds password hashes).
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
    },
    /// Replace the database with a backup; the server must be stopped. The current database
    /// is kept beside it as `<name>.before-restore-<UTC time>`.
    Restore {
        /// A file written by `easy-writer backup`.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
    },
    /// Ask the running server's `/health` (exit 0 when it answers 200): the container
    /// healthcheck of an image that has no shell or curl.
    Health {
        /// Address of the server (default: the configured bind address; an unspecified host
        /// such as 0.0.0.0 means this machine).
        #[arg(long, value_name = "ADDR")]
        addr: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a local user; prints `user_id: <uuid>`.
    Create(CreateUser),
    /// List users (tab-separated with a header, or JSON).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Credit (N > 0) or debit (N < 0) raits through the ledger as an adjustment.
    Topup {
        #[arg(long)]
        email: String,
        #[arg(long, allow_negative_numbers = true, value_name = "N")]
        raits: i64,
        /// Shown in the user's transaction history.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Block login and token use.
    Deactivate {
        #[arg(long)]
        email: String,
    },
    /// Unblock a deactivated user.
    Activate {
        #[arg(long)]
        email: String,
    },
    /// Mark the user's email verified (the operator vouches for it).
    Verify {
        #[arg(long)]
        email: String,
    },
    /// Set a new password and revoke every session of the user.
    ResetPassword(ResetPassword),
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("secret").required(true).args(["password", "password_stdin"])))]
pub struct ResetPassword {
    #[arg(long)]
    pub email: String,
    /// The new password (visible in the process list; prefer --password-stdin).
    #[arg(long)]
    pub password: Option<String>,
    /// Read the new password from the first line of standard input.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("secret").required(true).args(["password", "password_stdin"])))]
pub struct CreateUser {
    #[arg(long)]
    pub email: String,
    /// The password (visible in the process list; prefer --password-stdin).
    #[arg(long)]
    pub password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    pub password_stdin: bool,
    #[arg(long)]
    pub name: Option<String>,
    /// Give the user admin rights (admin UI, /metrics from afar).
    #[arg(long)]
    pub admin: bool,
}

#[derive(Subcommand, Debug)]
pub enum SiteCommand {
    /// Register a site; prints `site_id: <id>` and `access_password: <password>` (shown once).
    Create {
        /// The site's domain, e.g. blog.example.com (unique, case-insensitive).
        #[arg(long)]
        domain: String,
        #[arg(long)]
        name: Option<String>,
        /// The user whose raits pay for the site's articles; without, the site is the
        /// operator's own and its articles cost nothing.
        #[arg(long, value_name = "EMAIL")]
        owner: Option<String>,
    },
    /// List sites with owner and article counts (tab-separated with a header, or JSON).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Give a site a new access password (printed once); the old one stops working at once.
    RotatePassword {
        #[arg(long)]
        domain: String,
    },
    /// Remove a site; its articles stay, detached.
    Delete {
        #[arg(long)]
        domain: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ToolsCommand {
    /// Loads every prompt file (built-in, or EASY_WRITER_PROMPTS_DIR); prints `file: problem`
    /// lines and exits 1 on any problem.
    Check,
}

#[derive(Subcommand, Debug)]
pub enum ProvidersCommand {
    /// Prints `name: ok` or `name: error: <reason>` per configured provider; exit 1 on any error.
    Check,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the effective configuration (secrets masked), configured providers and warnings.
    Check,
}

/// How a command failed.
enum Failure {
    /// Exit 2: the input cannot be right.
    Usage(String),
    /// Exit 1.
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Failed(e)
    }
}

impl From<db::Error> for Failure {
    fn from(e: db::Error) -> Self {
        Failure::Failed(e.into())
    }
}

type Outcome = Result<(), Failure>;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let flags = Flags {
        config: cli.config.clone(),
        bind: match &cli.command {
            Command::Serve { bind } => bind.clone(),
            _ => None,
        },
    };
    let loaded = match Config::load(&flags, &ProcessEnv) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let is_serve = matches!(cli.command, Command::Serve { .. });
    let _log_guard = (is_serve || std::env::var_os("RUST_LOG").is_some())
        .then(|| telemetry::init(loaded.config.server.log_format == "json"));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(run(cli.command, loaded));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(command: Command, loaded: config::Loaded) -> Outcome {
    match command {
        Command::Serve { .. } => serve(loaded.config).await,
        Command::Migrate { status } => run_migrate(&loaded.config, status),
        Command::User(command) => run_user(command, &loaded.config).await,
        Command::Site(command) => run_site(command, &loaded.config).await,
        Command::Config(ConfigCommand::Check) => {
            print!("{}", config_report(&loaded));
            Ok(())
        }
        Command::Providers(ProvidersCommand::Check) => check_providers(&loaded.config).await,
        Command::Tools(ToolsCommand::Check) => check_tools(&loaded.config),
        Command::Backup { to } => backup(&loaded.config, &to),
        Command::Restore { from } => restore(&loaded.config, &from),
        Command::Health { addr } => health(&loaded.config, addr.as_deref()).await,
    }
}

fn check_tools(config: &Config) -> Outcome {
    let source = crate::tools::catalogue::Source::from_config(config);
    match crate::tools::Catalogue::load(&source) {
        Ok(catalogue) => {
            println!(
                "{} tools in {} tabs: ok",
                catalogue.len(),
                catalogue.tabs().len()
            );
            Ok(())
        }
        Err(problems) => {
            for problem in &problems {
                println!("{problem}");
            }
            Err(anyhow!("{} problem(s) in the prompt files", problems.len()).into())
        }
    }
}

async fn check_providers(config: &Config) -> Outcome {
    let providers = crate::llm::providers_from_config(config);
    let images = crate::images::Images::from_config(
        config,
        std::sync::Arc::new(crate::llm::metrics::Metrics::default()),
    )?;
    if providers.is_empty() && images.is_empty() {
        return Err(anyhow!(
            "no AI provider is configured (set OPENAI_API_KEY, GIGACHAT_API_KEY or \
             YANDEXGPT_API_KEY with YANDEXGPT_FOLDER_ID; FUSIONBRAIN_API_KEY for images)"
        )
        .into());
    }
    let mut failed = false;
    for (id, client) in providers {
        let result = match client {
            Ok(client) => client.check().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => println!("{id}: ok"),
            Err(e) => {
                failed = true;
                let hint = if id == crate::llm::ProviderId::GigaChat
                    && e.to_string().to_lowercase().contains("certificate")
                {
                    " (install the Russian Trusted Root CA: see the README, \"GigaChat\")"
                } else {
                    ""
                };
                println!("{id}: error: {e}{hint}");
            }
        }
    }
    for (id, result) in images.check().await {
        match result {
            Ok(()) => println!("{id}: ok"),
            Err(e) => {
                failed = true;
                println!("{id}: error: {e}");
            }
        }
    }
    if failed {
        return Err(anyhow!("some providers failed").into());
    }
    Ok(())
}

async fn serve(config: Config) -> Outcome {
    let bind = config.server.bind.clone();
    // Opening and migrating the database blocks: keep it off the async workers.
    let state = tokio::task::spawn_blocking(move || AppState::new(config))
        .await
        .context("start-up task")??;
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let addr = listener.local_addr().context("listener address")?;
    tracing::info!(%addr, version = env!("CARGO_PKG_VERSION"), "listening");
    server::serve(listener, state, server::shutdown_signal())
        .await
        .context("server")?;
    tracing::info!("stopped");
    Ok(())
}

fn run_migrate(config: &Config, status: bool) -> Outcome {
    let path = config.server.database_path();
    if status {
        let current = if path.exists() {
            let conn = db::connect(&path)?;
            migrate::status(&conn)?
        } else {
            migrate::status(&rusqlite::Connection::open_in_memory().map_err(db::Error::from)?)?
        };
        for m in current {
            let state = if m.applied { "applied" } else { "pending" };
            println!("{:04} {}\t{state}", m.version, m.name);
        }
        return Ok(());
    }
    std::fs::create_dir_all(&config.server.data_dir)
        .with_context(|| format!("cannot create {}", config.server.data_dir.display()))?;
    let mut conn = db::connect(&path)?;
    let applied = migrate::apply(&mut conn)?;
    if applied.is_empty() {
        println!(
            "database is up to date (version {})",
            migrate::current_version(&conn)?
        );
    }
    for name in applied {
        println!("applied {name}");
    }
    Ok(())
}

async fn run_user(command: UserCommand, config: &Config) -> Outcome {
    match command {
        UserCommand::Create(args) => create_user(args, config).await,
        UserCommand::List { json } => list_users(config, json).await,
        UserCommand::Topup {
            email,
            raits,
            reason,
        } => topup(config, &email, raits, reason).await,
        UserCommand::Deactivate { email } => set_active(config, &email, false).await,
        UserCommand::Activate { email } => set_active(config, &email, true).await,
        UserCommand::Verify { email } => verify_email(config, &email).await,
        UserCommand::ResetPassword(args) => reset_password(args, config).await,
    }
}

async fn create_user(args: CreateUser, config: &Config) -> Outcome {
    let password = match args.password {
        Some(password) => password,
        None => read_password_line()?,
    };
    let (email, name) = users::validate_signup(&args.email, &password, args.name.as_deref())
        .map_err(|errors| {
            let messages: Vec<_> = errors.iter().map(|e| e.msg.clone()).collect();
            Failure::Usage(messages.join("; "))
        })?;
    let db = app::open_db(config)?;
    let hashed = crate::auth::password::Hasher::new().hash(password).await?;
    let is_admin = args.admin;
    let user = db
        .write(move |tx| {
            users::store::insert(
                tx,
                &users::store::NewUser {
                    email: email.as_str(),
                    hashed_password: &hashed,
                    name: name.as_deref(),
                    is_admin,
                },
            )
        })
        .await
        .map_err(|e| match e {
            users::store::InsertError::EmailTaken => {
                anyhow!("a user with email {} already exists", args.email.trim())
            }
            users::store::InsertError::Db(e) => e.into(),
        })?;
    println!("user_id: {}", user.id);
    Ok(())
}

fn read_password_line() -> Result<String, Failure> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password: ");
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        return Err(Failure::Usage("no password on standard input".into()));
    }
    Ok(password)
}

async fn list_users(config: &Config, as_json: bool) -> Outcome {
    let db = app::open_db(config)?;
    let users = db
        .read(users::store::list)
        .await
        .map_err(anyhow::Error::from)?;
    if as_json {
        let items: Vec<_> = users
            .iter()
            .map(|u| {
                json!({
                    "id": u.id, "email": u.email, "name": u.name, "provider": u.provider,
                    "balance": u.balance, "is_active": u.is_active, "is_admin": u.is_admin,
                    "is_verified": u.is_verified, "created_at": u.created_at,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&items).map_err(anyhow::Error::from)?
        );
    } else {
        println!("id\temail\tprovider\tbalance\tactive\tadmin\tcreated_at");
        for u in users {
            println!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                u.id, u.email, u.provider, u.balance, u.is_active, u.is_admin, u.created_at
            );
        }
    }
    Ok(())
}

async fn topup(config: &Config, email: &str, raits: i64, reason: Option<String>) -> Outcome {
    if raits == 0 {
        return Err(Failure::Usage("--raits must not be 0".into()));
    }
    let db = app::open_db(config)?;
    let email_owned = email.trim().to_owned();
    let result = db
        .write(move |tx| {
            let user =
                users::store::by_email(tx, &email_owned)?.ok_or(billing::Error::UserNotFound)?;
            let description = reason.unwrap_or_else(|| "Adjustment by the operator".into());
            ledger::record(
                tx,
                &ledger::Entry {
                    user_id: &user.id,
                    kind: billing::Kind::Adjustment,
                    amount: raits,
                    description: Some(&description),
                    payment_id: None,
                    reference: None,
                },
            )
        })
        .await;
    match result {
        Ok(balance) => {
            println!("balance: {balance}");
            Ok(())
        }
        Err(billing::Error::UserNotFound) => Err(anyhow!("no user with email {email}").into()),
        Err(billing::Error::InsufficientBalance { balance, .. }) => Err(anyhow!(
            "refused: the balance of {email} is {balance} raits, a debit of {} would take it below zero",
            -raits
        )
        .into()),
        Err(e) => Err(anyhow::Error::from(e).into()),
    }
}

async fn set_active(config: &Config, email: &str, active: bool) -> Outcome {
    let db: Db = app::open_db(config)?;
    let email_owned = email.to_owned();
    let found = db
        .write(move |tx| users::store::set_active(tx, &email_owned, active))
        .await
        .map_err(anyhow::Error::from)?;
    if !found {
        return Err(anyhow!("no user with email {email}").into());
    }
    println!("{email}: {}", if active { "active" } else { "deactivated" });
    Ok(())
}

async fn verify_email(config: &Config, email: &str) -> Outcome {
    let db = app::open_db(config)?;
    let email_owned = email.trim().to_owned();
    let found = db
        .write(move |tx| {
            let Some(user) = users::store::by_email(tx, &email_owned)? else {
                return Ok(false);
            };
            users::store::set_verified(tx, &user.id)?;
            Ok::<_, db::Error>(true)
        })
        .await
        .map_err(anyhow::Error::from)?;
    if !found {
        return Err(anyhow!("no user with email {}", email.trim()).into());
    }
    println!("{}: verified", email.trim());
    Ok(())
}

async fn reset_password(args: ResetPassword, config: &Config) -> Outcome {
    let password = match args.password {
        Some(password) => password,
        None => read_password_line()?,
    };
    users::check_password(&password).map_err(Failure::Usage)?;
    let db = app::open_db(config)?;
    let hashed = crate::auth::password::Hasher::new().hash(password).await?;
    let email = args.email.trim().to_owned();
    let revoked = {
        let email = email.clone();
        db.write(move |tx| {
            let Some(user) = users::store::by_email(tx, &email)? else {
                return Ok(None);
            };
            users::store::set_password(tx, &user.id, &hashed)?;
            let revoked = crate::auth::store::revoke_all_sessions(
                tx,
                &user.id,
                "password reset by the operator",
            )?;
            Ok::<_, db::Error>(Some(revoked))
        })
        .await
        .map_err(anyhow::Error::from)?
    };
    let Some(revoked) = revoked else {
        return Err(anyhow!("no user with email {email}").into());
    };
    println!("{email}: password set, {revoked} session(s) revoked");
    Ok(())
}

async fn run_site(command: SiteCommand, config: &Config) -> Outcome {
    match command {
        SiteCommand::Create {
            domain,
            name,
            owner,
        } => create_site(config, &domain, name, owner).await,
        SiteCommand::List { json } => list_sites(config, json).await,
        SiteCommand::RotatePassword { domain } => rotate_site_password(config, &domain).await,
        SiteCommand::Delete { domain } => delete_site(config, &domain).await,
    }
}

/// A domain as stored: trimmed, lowercase, without a scheme or a trailing slash; a usage
/// error when it cannot be one.
fn site_domain(raw: &str) -> Result<String, Failure> {
    let text = raw.trim().to_lowercase();
    let text = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .unwrap_or(&text)
        .trim_end_matches('/')
        .to_owned();
    let ok = !text.is_empty()
        && text.len() <= 253
        && text
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | ':' | '/' | '_'));
    if !ok {
        return Err(Failure::Usage(format!("not a site domain: {raw:?}")));
    }
    Ok(text)
}

async fn create_site(
    config: &Config,
    domain: &str,
    name: Option<String>,
    owner: Option<String>,
) -> Outcome {
    let domain = site_domain(domain)?;
    let name = name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
    if name.as_ref().is_some_and(|n| n.chars().count() > 100) {
        return Err(Failure::Usage(
            "--name must be at most 100 characters".into(),
        ));
    }
    let db = app::open_db(config)?;
    let password = legacy::new_password();
    let digest = legacy::password_digest(&password);
    let created = {
        let (domain, owner) = (domain.clone(), owner.clone());
        db.write(move |tx| {
            let owner_id = match &owner {
                Some(email) => match users::store::by_email(tx, email.trim())? {
                    Some(user) => Some(user.id),
                    None => return Ok(None),
                },
                None => None,
            };
            legacy::store::insert_site(tx, &domain, name.as_deref(), owner_id.as_deref(), &digest)
                .map(Some)
        })
        .await
    };
    let site = match created {
        Ok(Some(site)) => site,
        Ok(None) => {
            return Err(anyhow!("no user with email {}", owner.unwrap_or_default().trim()).into());
        }
        Err(legacy::store::SiteError::DomainTaken) => {
            return Err(anyhow!("a site with domain {domain} already exists").into());
        }
        Err(legacy::store::SiteError::Db(e)) => return Err(e.into()),
    };
    println!("site_id: {}", site.id);
    println!("access_password: {password}");
    Ok(())
}

async fn list_sites(config: &Config, as_json: bool) -> Outcome {
    let db = app::open_db(config)?;
    let sites = db
        .read(legacy::store::list_sites)
        .await
        .map_err(anyhow::Error::from)?;
    if as_json {
        let items: Vec<_> = sites
            .iter()
            .map(|s| {
                json!({
                    "id": s.site.id, "domain": s.site.domain, "name": s.site.name,
                    "owner": s.owner_email, "created_at": s.created_at,
                    "articles": {
                        "total": s.articles, "completed": s.completed,
                        "published": s.published, "failed": s.failed,
                    },
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&items).map_err(anyhow::Error::from)?
        );
    } else {
        println!("id\tdomain\tname\towner\tarticles\tcompleted\tpublished\tfailed\tcreated_at");
        for s in sites {
            println!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                s.site.id,
                s.site.domain,
                s.site.name.as_deref().unwrap_or(""),
                s.owner_email.as_deref().unwrap_or(""),
                s.articles,
                s.completed,
                s.published,
                s.failed,
                s.created_at
            );
        }
    }
    Ok(())
}

async fn rotate_site_password(config: &Config, domain: &str) -> Outcome {
    let domain = site_domain(domain)?;
    let db = app::open_db(config)?;
    let password = legacy::new_password();
    let digest = legacy::password_digest(&password);
    let found = {
        let domain = domain.clone();
        db.write(move |tx| legacy::store::set_password(tx, &domain, &digest))
            .await
            .map_err(anyhow::Error::from)?
    };
    if !found {
        return Err(anyhow!("no site with domain {domain}").into());
    }
    println!("access_password: {password}");
    Ok(())
}

async fn delete_site(config: &Config, domain: &str) -> Outcome {
    let domain = site_domain(domain)?;
    let db = app::open_db(config)?;
    let found = {
        let domain = domain.clone();
        db.write(move |tx| legacy::store::delete_site(tx, &domain))
            .await
            .map_err(anyhow::Error::from)?
    };
    if !found {
        return Err(anyhow!("no site with domain {domain}").into());
    }
    println!("{domain}: deleted (its articles are kept, detached)");
    Ok(())
}

fn backup(config: &Config, to: &std::path::Path) -> Outcome {
    db::backup::backup(&config.server.database_path(), to)?;
    println!("backup written to {}", to.display());
    Ok(())
}

async fn health(config: &Config, addr: Option<&str>) -> Outcome {
    let addr = addr.unwrap_or(&config.server.bind);
    let mut addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| Failure::Usage(format!("not an address: {addr}")))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(4))
        .no_proxy()
        .build()
        .context("HTTP client")?;
    let response = client
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .with_context(|| format!("no answer from {addr}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    println!("{body}");
    if status.is_success() {
        Ok(())
    } else {
        Err(anyhow!("{addr} answered {status}").into())
    }
}

fn restore(config: &Config, from: &std::path::Path) -> Outcome {
    let path = config.server.database_path();
    let restored = db::backup::restore(&path, from)?;
    println!(
        "restored {} into {} (schema version {})",
        from.display(),
        path.display(),
        restored.version
    );
    if restored.migrated_to != restored.version {
        println!("migrated to schema version {}", restored.migrated_to);
    }
    if let Some(previous) = restored.previous {
        println!("previous database kept as {}", previous.display());
    }
    if let Some(damage) = restored.replaced_damaged {
        eprintln!("warning: the database it replaced was damaged ({damage})");
    }
    Ok(())
}

/// The text of `config check`: every setting with its source, secrets masked.
pub fn config_report(loaded: &config::Loaded) -> String {
    use std::fmt::Write;
    let config = &loaded.config;
    let mut out = String::new();
    let file = loaded
        .file
        .as_ref()
        .map_or("(none)".to_owned(), |p| p.display().to_string());
    let _ = writeln!(out, "# configuration file: {file}");
    let effective = toml::Value::try_from(config).unwrap_or(toml::Value::Table(Default::default()));
    let mut section = "";
    for setting in SETTINGS {
        if setting.section != section {
            section = setting.section;
            let _ = writeln!(out, "\n[{section}]");
        }
        let value = effective
            .get(setting.section)
            .and_then(|s| s.get(setting.key))
            .map(|v| v.to_string());
        let source = loaded
            .sources
            .get(setting.env)
            .copied()
            .unwrap_or(Source::Default);
        let value = value.unwrap_or_else(|| match (setting.section, setting.key) {
            ("server", "database") => {
                format!("{:?}", config.server.database_path().display().to_string())
            }
            ("server", "public_url") => format!("{:?}", config.server.public_url()),
            ("auth", "jwt_secret") => format!(
                "\"(generated, kept in {})\"",
                config
                    .server
                    .data_dir
                    .join(crate::auth::jwt::SECRET_FILE)
                    .display()
            ),
            _ => "\"\"".into(),
        });
        let _ = writeln!(
            out,
            "{} = {value}  # {} ({source})",
            setting.key, setting.env
        );
    }
    let _ = writeln!(out, "\n# providers");
    for (name, on) in config.configured_services() {
        let _ = writeln!(
            out,
            "# {name}: {}",
            if on { "configured" } else { "disabled" }
        );
    }
    let mut warnings = config.warnings();
    if let Err(e) = crate::mail::Mailer::from_config(config) {
        warnings.push(format!("{e:#}"));
    }
    for warning in warnings {
        let _ = writeln!(out, "# warning: {warning}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn topup_accepts_negative_amounts() {
        let cli = Cli::try_parse_from([
            "easy-writer",
            "user",
            "topup",
            "--email",
            "a@b.co",
            "--raits",
            "-50",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::User(UserCommand::Topup { raits: -50, .. })
        ));
    }
}
