//! Rebuilds this crate when a migration is added: `sqlx::migrate!` embeds the files, but
//! cargo only notices changes to files it already knows about.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
