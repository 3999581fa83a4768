//! Tabs and tools: the prompt catalogue (YAML files under `prompts/`, validated once and
//! cached), template rendering, and the `/tools/*` endpoints.
//!
//! A tool is data, not code: its form (JSON Schema), prompts, modes, prices and preferred
//! provider come from its file, so operators can edit prompts and add tools without a build.

pub mod catalogue;
pub mod price;
pub mod render;
pub mod routes;

pub use catalogue::{Catalogue, Tool};

/// The five tabs, in the spec's order, with the tools each must hold (SPEC.md).
pub const TABS: &[Tab] = &[
    Tab {
        id: "everyday",
        name: "На каждый день",
        icon: "sun",
        tools: &[
            "spell_check",
            "paraphrase",
            "simplify",
            "letter",
            "social_post",
            "resume",
            "summarize",
            "translate",
        ],
    },
    Tab {
        id: "education",
        name: "Обучение",
        icon: "graduation-cap",
        tools: &[
            "essay",
            "essay_academic",
            "report",
            "abstract",
            "notes",
            "retelling",
            "qa_text",
        ],
    },
    Tab {
        id: "business",
        name: "Бизнес",
        icon: "briefcase",
        tools: &[
            "contract_generate",
            "contract_analyze",
            "commercial_offer",
            "business_letter",
            "meeting_notes",
            "presentation_text",
        ],
    },
    Tab {
        id: "marketing",
        name: "Маркетинг",
        icon: "megaphone",
        tools: &[
            "seo_article",
            "product_description",
            "email_campaign",
            "landing_text",
            "press_release",
            "slogan",
            "naming",
        ],
    },
    Tab {
        id: "special",
        name: "Особый случай",
        icon: "sparkles",
        tools: &[
            "custom_prompt",
            "greeting_card",
            "toast",
            "speech",
            "image_generate",
            "image_upscale",
        ],
    },
];

/// A tab as the spec fixes it.
#[derive(Debug)]
pub struct Tab {
    pub id: &'static str,
    pub name: &'static str,
    pub icon: &'static str,
    /// Tools the spec requires in this tab, in display order.
    pub tools: &'static [&'static str],
}

/// Tools whose work is an image; they are executed by the images issue.
pub const IMAGE_TOOLS: &[&str] = &["greeting_card", "image_generate", "image_upscale"];
