//! What a run costs: the tool's base price for its mode (`costs`), plus a rate per unit of
//! effort the form already measures — 1,000 characters of a text, pages, words, minutes —
//! beyond the units the base price includes. `POST /tools/{id}/quote` and execute both call
//! [`Tool::quote`], so the price quoted is the price charged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::catalogue::{Mode, Tool};

/// What a unit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Characters of a text field, in blocks of `per` (1,000 by default).
    Characters,
    Pages,
    /// Words, in blocks of `per` (1 by default; 100 reads better in a price).
    Words,
    Minutes,
    /// Slides, letters and the like: an integer count.
    Items,
}

/// `price_per_unit` in a tool file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitPrice {
    /// The form field measured: a string (characters) or an integer (pages, words, minutes).
    pub field: String,
    pub unit: Unit,
    /// Characters (default 1,000) or words (default 1) per unit; other units count one by one.
    #[serde(default)]
    pub per: Option<u64>,
    /// Units the base price covers.
    pub included: u64,
    /// Raits per started unit beyond `included`, per mode.
    pub rates: BTreeMap<String, i64>,
}

impl UnitPrice {
    fn per(&self) -> u64 {
        match self.unit {
            Unit::Characters => self.per.unwrap_or(1000).max(1),
            Unit::Words => self.per.unwrap_or(1).max(1),
            _ => 1,
        }
    }

    /// The units `input` measures: started blocks of characters, or the integer's value (its
    /// schema default when absent).
    pub fn count(&self, input: &Value, schema: &Value) -> u64 {
        let value = match input.get(&self.field) {
            None | Some(Value::Null) => &schema["properties"][&self.field]["default"],
            Some(value) => value,
        };
        match self.unit {
            Unit::Characters => {
                let chars = match value {
                    Value::String(s) => s.chars().count() as u64,
                    Value::Array(items) => items
                        .iter()
                        .filter_map(Value::as_str)
                        .map(|s| s.chars().count() as u64)
                        .sum(),
                    _ => 0,
                };
                chars.div_ceil(self.per())
            }
            _ => value
                .as_u64()
                .map_or(self.included, |n| n.div_ceil(self.per())),
        }
    }

    /// The unit's name in a quote: `1000_characters`, `pages`, `100_words`, `words`,
    /// `minutes`, `items`.
    pub fn name(&self) -> String {
        match (self.unit, self.per()) {
            (Unit::Characters, per) => format!("{per}_characters"),
            (Unit::Words, 1) => "words".into(),
            (Unit::Words, per) => format!("{per}_words"),
            (Unit::Pages, _) => "pages".into(),
            (Unit::Minutes, _) => "minutes".into(),
            (Unit::Items, _) => "items".into(),
        }
    }

    /// Problems with this block for a tool with `schema` and `modes`.
    pub fn problems(&self, schema: &Value, modes: &[Mode]) -> Vec<String> {
        let mut problems = Vec::new();
        let kind = &schema["properties"][&self.field]["type"];
        let fits = match self.unit {
            Unit::Characters => kind == "string" || kind == "array",
            _ => kind == "integer",
        };
        if !fits {
            problems.push(format!(
                "price_per_unit.field {:?} must be {} field of input_schema",
                self.field,
                if self.unit == Unit::Characters {
                    "a string (or array of strings)"
                } else {
                    "an integer"
                }
            ));
        }
        for (mode, rate) in &self.rates {
            if !modes.iter().any(|m| m.as_str() == mode) {
                problems.push(format!(
                    "price_per_unit.rates.{mode}: not a mode of this tool"
                ));
            }
            if *rate < 0 {
                problems.push(format!("price_per_unit.rates.{mode} must not be negative"));
            }
        }
        problems
    }
}

/// A run's price and how it was reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Quote {
    /// What execute debits for this input now.
    pub cost_raits: i64,
    /// The base price of the mode (`costs`), which covers `included` units.
    pub base_raits: i64,
    /// Units the input measures, when the price depends on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub units: Option<u64>,
    /// `1000_characters`, `pages`, `100_words`, `minutes`, `items`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub included_units: Option<u64>,
    /// Raits per unit beyond the included ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_raits: Option<i64>,
}

impl Tool {
    /// The price of running this tool on `input` in `mode`; `None` when the tool has no price
    /// for it. An image tool's price is its format's or scale's (`costs` keys).
    pub fn quote(&self, mode: Mode, input: &Value) -> Option<Quote> {
        let base = self.base_cost(mode, input)?;
        let flat = Quote {
            cost_raits: base,
            base_raits: base,
            units: None,
            unit: None,
            included_units: None,
            rate_raits: None,
        };
        let Some(price) = &self.price_per_unit else {
            return Some(flat);
        };
        let rate = price.rates.get(mode.as_str()).copied().unwrap_or(0);
        let units = price.count(input, &self.input_schema);
        let extra = units.saturating_sub(price.included);
        let cost = i64::try_from(extra)
            .ok()
            .and_then(|extra| extra.checked_mul(rate))
            .and_then(|extra| extra.checked_add(base))?;
        Some(Quote {
            cost_raits: cost,
            units: Some(units),
            unit: Some(price.name()),
            included_units: Some(price.included),
            rate_raits: Some(rate),
            ..flat
        })
    }

    /// The price of a run before anything is measured: the mode's, or an image tool's format
    /// or scale.
    fn base_cost(&self, mode: Mode, input: &Value) -> Option<i64> {
        if self.is_image_tool() {
            let by_input = ["format", "scale"].iter().find_map(|field| {
                let value = match &input[*field] {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return None,
                };
                self.costs.get(&value).copied()
            });
            if by_input.is_some() {
                return by_input;
            }
        }
        self.costs.get(mode.as_str()).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn price(unit: Unit, field: &str) -> UnitPrice {
        UnitPrice {
            field: field.into(),
            unit,
            per: None,
            included: 2,
            rates: BTreeMap::from([("quick".into(), 3)]),
        }
    }

    #[test]
    fn characters_count_in_started_blocks_and_integers_by_value_or_default() {
        let schema = json!({"properties": {
            "text": {"type": "string"},
            "pages": {"type": "integer", "default": 10},
        }});
        let chars = price(Unit::Characters, "text");
        assert_eq!(chars.count(&json!({"text": ""}), &schema), 0);
        assert_eq!(chars.count(&json!({"text": "я".repeat(1000)}), &schema), 1);
        assert_eq!(chars.count(&json!({"text": "я".repeat(1001)}), &schema), 2);
        assert_eq!(chars.count(&json!({"text": ["ab", "cd"]}), &schema), 1);
        let pages = price(Unit::Pages, "pages");
        assert_eq!(pages.count(&json!({"pages": 25}), &schema), 25);
        assert_eq!(pages.count(&json!({}), &schema), 10);
        assert_eq!(pages.name(), "pages");
        let words = UnitPrice {
            per: Some(100),
            ..price(Unit::Words, "pages")
        };
        assert_eq!(words.count(&json!({"pages": 1501}), &schema), 16);
        assert_eq!(words.name(), "100_words");
        assert_eq!(chars.name(), "1000_characters");
    }

    #[test]
    fn a_field_of_the_wrong_kind_or_a_rate_for_another_mode_is_a_problem() {
        let schema = json!({"properties": {"text": {"type": "string"}, "n": {"type": "integer"}}});
        assert!(
            price(Unit::Characters, "text")
                .problems(&schema, &[Mode::Quick])
                .is_empty()
        );
        assert_eq!(
            price(Unit::Pages, "text")
                .problems(&schema, &[Mode::Quick])
                .len(),
            1
        );
        assert_eq!(
            price(Unit::Words, "n")
                .problems(&schema, &[Mode::Standard])
                .len(),
            1
        );
    }
}
