//! The demo catalogue: a few hundred pets across categories, generated deterministically (the
//! same rows every time), so demos and tests can rely on what is there.

use rust_decimal::Decimal;
use sqlx::PgPool;

/// Pets generated per category.
const PER_CATEGORY: usize = 50;

const CATEGORIES: &[(&str, &[&str])] = &[
    (
        "dogs",
        &[
            "Rex", "Bella", "Max", "Luna", "Charlie", "Daisy", "Buddy", "Molly", "Rocky", "Sadie",
        ],
    ),
    (
        "cats",
        &[
            "Misty", "Oliver", "Leo", "Chloe", "Simba", "Nala", "Tiger", "Lily", "Felix", "Cleo",
        ],
    ),
    (
        "birds",
        &[
            "Kiwi", "Sunny", "Rio", "Pip", "Sky", "Mango", "Blue", "Tweety", "Echo", "Zazu",
        ],
    ),
    (
        "fish",
        &[
            "Nemo", "Dory", "Bubbles", "Finn", "Goldie", "Splash", "Coral", "Marlin", "Gill",
            "Wanda",
        ],
    ),
    (
        "reptiles",
        &[
            "Spike", "Rango", "Godzilla", "Shelly", "Draco", "Iggy", "Slinky", "Yoshi", "Scales",
            "Kaa",
        ],
    ),
    (
        "small-pets",
        &[
            "Nibbles", "Peanut", "Hazel", "Biscuit", "Clover", "Pepper", "Cocoa", "Oreo",
            "Thumper", "Whiskers",
        ],
    ),
];

const TAGS: &[&str] = &[
    "friendly",
    "young",
    "senior",
    "trained",
    "vaccinated",
    "hypoallergenic",
    "playful",
    "calm",
];

/// Inserts the catalogue unless pets exist already. Returns how many pets were inserted.
pub async fn seed(db: &PgPool) -> Result<u64, sqlx::Error> {
    let mut tx = db.begin().await?;
    // Concurrent seeds (several nodes, or a retry) must not double the catalogue.
    sqlx::query("lock table pet in exclusive mode")
        .execute(&mut *tx)
        .await?;
    let existing: i64 = sqlx::query_scalar("select count(*) from pet")
        .fetch_one(&mut *tx)
        .await?;
    if existing > 0 {
        return Ok(0);
    }
    let mut inserted = 0;
    for (c, (category, names)) in CATEGORIES.iter().enumerate() {
        for i in 0..PER_CATEGORY {
            let n = c * PER_CATEGORY + i;
            let name = format!("{} {}", names[i % names.len()], i / names.len() + 1);
            let tags: Vec<String> = (0..(n % 3 + 1))
                .map(|k| TAGS[(n * 7 + k * 3) % TAGS.len()].to_owned())
                .collect();
            let status = match n % 10 {
                0 => "sold",
                1 | 2 => "pending",
                _ => "available",
            };
            // 5.00 to 2504.99, in cents, spread by a multiplicative hash.
            let cents = 500 + (n as i64 * 7919) % 250_000;
            let stock = if status == "sold" {
                0
            } else {
                (n % 20) as i32 + 1
            };
            sqlx::query(
                "insert into pet (name, category, tags, photo_urls, status, price, stock)
                 values ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&name)
            .bind(category)
            .bind(&tags)
            .bind(vec![format!(
                "https://images.petmesh.example/{category}/{n}.jpg"
            )])
            .bind(status)
            .bind(Decimal::new(cents, 2))
            .bind(stock)
            .execute(&mut *tx)
            .await?;
            inserted += 1;
        }
    }
    tx.commit().await?;
    Ok(inserted)
}
