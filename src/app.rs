//! `AppState`: the shared dependencies every handler reaches through, and the one function
//! that wires them from a [`Config`].

use std::sync::Arc;

use anyhow::Context;

use crate::auth::{self, Auth};
use crate::config::Config;
use crate::db::Db;
use crate::jobs::{self, ws};
use crate::llm::{self, LlmRouter};
use crate::{gallery, images, mail, payments, tools};

/// Cheap to clone; every field is shared.
#[derive(Clone)]
pub struct AppState {
    /// The effective configuration, validated.
    pub config: Arc<Config>,
    /// SQLite: one writer, pooled readers.
    pub db: Db,
    /// Token keys, password hasher, login throttle.
    pub auth: Arc<Auth>,
    /// Google and Yandex sign-in: their clients and the attempts in flight.
    pub oauth: Arc<auth::oauth::OAuth>,
    /// `EASY_WRITER_TRUSTED_PROXIES`, parsed once.
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
    /// The configured AI providers behind retries, fallback and metrics.
    pub llm: Arc<LlmRouter>,
    /// The prompt catalogue (tabs and tools), reloaded when a prompts directory changes.
    pub tools: tools::catalogue::Current,
    /// Background jobs in flight and the hub their watchers follow.
    pub jobs: jobs::Runner,
    /// Open WebSockets, closed on shutdown once the jobs have settled.
    pub sockets: ws::Sockets,
    /// Reset and verification letters over SMTP; `None` without `SMTP_URL`.
    pub mailer: Option<Arc<mail::Mailer>>,
    /// The configured image providers and the upscaler.
    pub images: Arc<images::Images>,
    /// Users' pictures: the database, the uploads directory, the signed links, `images`.
    pub gallery: gallery::work::Deps,
    /// The configured payment providers and the top-up settings around them.
    pub payments: Arc<payments::Payments>,
}

impl AppState {
    /// Creates the data directory, opens and migrates the database, loads (or generates) the
    /// JWT secret and loads the prompt catalogue, refusing a broken one. Touches no network.
    pub fn new(config: Config) -> anyhow::Result<AppState> {
        let tools = tools::catalogue::Current::load(tools::catalogue::Source::from_config(&config))
            .map_err(|problems| {
                let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
                anyhow::anyhow!("the prompt files have problems:\n{}", lines.join("\n"))
            })?;
        let db = open_db(&config)?;
        let secret = match &config.auth.jwt_secret {
            Some(secret) => secret.expose().as_bytes().to_vec(),
            None => {
                auth::jwt::load_or_generate_secret(&config.server.data_dir).with_context(|| {
                    format!(
                        "cannot keep the JWT secret in {}",
                        config.server.data_dir.display()
                    )
                })?
            }
        };
        let mut providers = Vec::new();
        for (id, client) in llm::providers_from_config(&config) {
            match client {
                Ok(client) => providers.push(client),
                Err(e) => tracing::warn!(llm.provider = %id, error = %e, "provider disabled"),
            }
        }
        let llm = LlmRouter::new(
            providers,
            llm::router::Settings::from_config(&config),
            Arc::new(llm::metrics::Metrics::default()),
        );
        if llm.is_empty() {
            tracing::warn!(
                "no AI provider is configured: tools answer 503 providers_unavailable until \
                 OPENAI_API_KEY, GIGACHAT_API_KEY or the YandexGPT credentials are set"
            );
        }
        let oauth = auth::oauth::OAuth::new(&config, auth::oauth::TIMEOUT)?;
        let mailer = mail::Mailer::from_config(&config)?.map(Arc::new);
        let images = Arc::new(images::Images::from_config(&config, llm.metrics().clone())?);
        if images.is_empty() {
            tracing::warn!(
                "no image provider is configured: images answer 503 providers_unavailable until \
                 FUSIONBRAIN_API_KEY and FUSIONBRAIN_SECRET_KEY or the YandexGPT credentials are set"
            );
        }
        let gallery = gallery::work::Deps {
            db: db.clone(),
            images: images.clone(),
            files: gallery::Files::new(&config.server.data_dir),
            links: Arc::new(gallery::Links::new(&secret, &config.server.public_url())),
        };
        let runner = jobs::Runner::new(
            config.jobs.job_concurrency as usize,
            std::time::Duration::from_secs(config.jobs.shutdown_grace_secs),
        );
        let payments = Arc::new(payments::Payments::from_config(&config)?);
        Ok(AppState {
            payments,
            tools,
            oauth: Arc::new(oauth),
            jobs: runner,
            sockets: ws::Sockets::default(),
            mailer,
            images,
            gallery,
            llm: Arc::new(llm),
            auth: Arc::new(Auth::new(&config.auth, &secret)),
            trusted_proxies: config.trusted_proxies().into(),
            db,
            config: Arc::new(config),
        })
    }
}

/// Creates the data directory (0700) and opens the database, applying pending migrations.
pub fn open_db(config: &Config) -> anyhow::Result<Db> {
    let dir = &config.server.data_dir;
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
    }
    let path = config.server.database_path();
    Db::open(&path).with_context(|| format!("cannot open database {}", path.display()))
}
