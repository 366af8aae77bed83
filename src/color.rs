//! The two environments. A leaf: imports nothing from the crate, so every layer can
//! name a colour without depending on another.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One of the two environments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Blue,
    Green,
}

// === impl Color ===

impl Color {
    pub const ALL: [Color; 2] = [Color::Blue, Color::Green];

    pub const fn index(self) -> usize {
        match self {
            Color::Blue => 0,
            Color::Green => 1,
        }
    }

    /// The other environment.
    pub const fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was neither `blue` nor `green`.
#[derive(Debug, thiserror::Error)]
#[error("unknown colour {0:?}; use \"blue\" or \"green\"")]
pub struct UnknownColor(pub String);

impl FromStr for Color {
    type Err = UnknownColor;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "blue" => Ok(Color::Blue),
            "green" => Ok(Color::Green),
            other => Err(UnknownColor(other.to_owned())),
        }
    }
}
