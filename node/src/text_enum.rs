//! Enums stored as text columns (`role`, `status`): one macro writes their database spelling and
//! its parsing, so every such enum round-trips the same way.

/// Implements `as_str` (the database spelling) and `TryFrom<String>` (for
/// `#[sqlx(try_from = "String")]`) for a fieldless enum.
macro_rules! text_enum {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// The database spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text),+
                }
            }
        }

        impl TryFrom<String> for $ty {
            type Error = String;

            fn try_from(value: String) -> Result<Self, Self::Error> {
                match value.as_str() {
                    $($text => Ok($ty::$variant),)+
                    other => Err(format!("unknown {} `{other}`", stringify!($ty))),
                }
            }
        }
    };
}

pub(crate) use text_enum;
