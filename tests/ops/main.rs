//! The ops dashboard over real HTTP against a spawned samvault and dev IdP, on SQLite and
//! PostgreSQL. One module per dashboard section; [`Operator`] and [`Account`] are the shared
//! user of the pages. (The browser suite, tests/browser.rs, drives the same pages in Chromium.)
#![allow(clippy::too_many_lines)] // scenarios read top to bottom

#[path = "../support/mod.rs"]
mod support;

mod attempts;
mod audit;
mod customers;
mod errors;
mod guard;
mod hostile;
mod integrations;
mod overview;
mod partners;
mod report;
mod sessions;
mod settings;
mod signin;

pub use support::ops::{Account, Operator};

/// The text a reader sees: tags dropped, whitespace collapsed (entities left as they are).
pub fn page_text(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
