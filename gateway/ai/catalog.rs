//! The AI catalog of one config generation: providers (each with its deployments as a load-balanced,
//! health-checked cluster), public models, aliases and profiles (ordered fallback chains).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::guard::{Guards, SystemPrompt};
use super::heuristics::Rule;
use super::secrets::SecretMasker;
use crate::observe::metrics::ModelMetrics;
use crate::upstream::cluster::Cluster;

/// What kind of API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// Any OpenAI-compatible API (OpenAI, OpenRouter, DeepSeek, Groq, Mistral, vLLM, Ollama's /v1, ...).
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
    /// Google's Gemini API (`generateContent`).
    Gemini,
    /// Amazon Bedrock's Converse API (requests signed with AWS Signature V4).
    Bedrock,
    /// Answers locally and deterministically.
    Mock,
}

/// Per-deployment request details (the cluster backend with the same index is its address).
#[derive(Debug, Clone)]
pub struct Deployment {
    /// Path prefix of the API, e.g. `/v1`.
    pub base_path: String,
    /// Authentication headers (`Authorization: Bearer ...`, `x-api-key`, ...), rendered by the provider's
    /// adapter when the config loads; marked sensitive, never logged.
    pub auth: Vec<(HeaderName, HeaderValue)>,
    /// Host header value (`host[:port]`).
    pub host: HeaderValue,
    /// Requests signed per request (Bedrock): the credentials and region.
    pub signing: Option<Arc<super::provider::bedrock::Signing>>,
}

#[derive(Debug, Clone, Copy)]
pub struct AiTimeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub total: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct MockSettings {
    pub chunks: usize,
    pub chunk_delay: Duration,
}

/// A configured provider.
#[derive(Debug)]
pub struct Provider {
    pub name: Arc<str>,
    /// The name as the `x-gateway-provider` response header value, built once.
    pub name_header: HeaderValue,
    pub kind: ProviderKind,
    /// Disabled providers (no key) are skipped in every plan.
    pub enabled: bool,
    /// Deployments as cluster backends (health, circuit breaker, DNS, TLS); absent for mock providers.
    pub cluster: Option<Arc<Cluster>>,
    pub deployments: Vec<Deployment>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub timeouts: AiTimeouts,
    pub mock: MockSettings,
    /// Default cooldown of a deployment after a 429 without Retry-After.
    pub cooldown: Duration,
}

/// A public model.
#[derive(Debug)]
pub struct Model {
    pub name: Arc<str>,
    /// The name as the `x-gateway-model` response header value, built once.
    pub name_header: HeaderValue,
    pub provider: Arc<Provider>,
    pub upstream_model: Arc<str>,
    pub context_window: Option<u64>,
    /// `max_tokens` sent to providers that require one (Anthropic) when the client gave none.
    pub max_tokens: Option<u64>,
    /// An OpenAI-compatible provider gets the output cap as `max_completion_tokens` (OpenAI's reasoning
    /// models refuse `max_tokens`).
    pub max_completion_tokens: bool,
    pub prices: super::usage::Prices,
    pub capabilities: Vec<String>,
    pub local: bool,
    pub metrics: ModelMetrics,
}

/// Everything the AI routes choose from.
#[derive(Debug, Default)]
pub struct Catalog {
    pub providers: Vec<Arc<Provider>>,
    pub models: Vec<Arc<Model>>,
    by_name: HashMap<String, usize>,
    aliases: HashMap<String, usize>,
    pub profiles: HashMap<String, Vec<Arc<Model>>>,
    pub auto_profile: String,
    pub attempts: u32,
    pub max_body_size: u64,
    /// Largest plain answer held whole (to mask secrets); a larger one is refused with 502.
    pub max_answer_size: u64,
    /// Heuristic rules for `model: "auto"`.
    pub rules: Vec<Rule>,
    /// Request guards.
    pub guards: Guards,
    /// Masks secrets in completions, when enabled.
    pub secrets: Option<SecretMasker>,
    /// System prompts of profiles that have one.
    pub profile_prompts: HashMap<String, SystemPrompt>,
}

impl Catalog {
    pub fn new(
        providers: Vec<Arc<Provider>>,
        models: Vec<Arc<Model>>,
        aliases: HashMap<String, String>,
        profiles: HashMap<String, Vec<Arc<Model>>>,
        auto_profile: String,
        attempts: u32,
        max_body_size: u64,
    ) -> Self {
        let by_name: HashMap<String, usize> = models
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.to_string(), i))
            .collect();
        let aliases = aliases
            .into_iter()
            .filter_map(|(alias, target)| by_name.get(&target).map(|&i| (alias, i)))
            .collect();
        Catalog {
            providers,
            models,
            by_name,
            aliases,
            profiles,
            auto_profile,
            attempts,
            max_body_size,
            max_answer_size: u64::MAX,
            rules: Vec::new(),
            guards: Guards::default(),
            secrets: None,
            profile_prompts: HashMap::new(),
        }
    }

    /// A model by its name or an alias.
    pub fn model(&self, name: &str) -> Option<&Arc<Model>> {
        self.by_name
            .get(name)
            .or_else(|| self.aliases.get(name))
            .map(|&i| &self.models[i])
    }

    /// A model of a given provider by its name, alias, or the provider's own id for it.
    pub fn provider_model(&self, provider: &str, name: &str) -> Option<&Arc<Model>> {
        self.model(name)
            .filter(|m| &*m.provider.name == provider)
            .or_else(|| {
                self.models
                    .iter()
                    .find(|m| &*m.provider.name == provider && &*m.upstream_model == name)
            })
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}
