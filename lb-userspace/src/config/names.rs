//! Configuration enums spelled once: each lists its names in the file, which parsing, rendering,
//! status and error messages all use.

/// An enum of the configuration with its names.
pub trait Named: Copy + 'static {
    /// Every value with its name, in the order error messages list them. Values with data
    /// (a scheduler's prefix length) stand with a default the validator refines.
    const NAMES: &'static [(&'static str, Self)];
    /// What a value is called in errors ("an XDP mode").
    const WHAT: &'static str;

    /// The value's name in the file.
    fn name(self) -> &'static str {
        let this = core::mem::discriminant(&self);
        Self::NAMES
            .iter()
            .find(|(_, v)| core::mem::discriminant(v) == this)
            .map(|(n, _)| *n)
            .expect("every value of a named enum is in its NAMES")
    }

    /// The value named `s`, or an error that lists the names.
    fn parse(s: &str) -> Result<Self, String> {
        Self::NAMES.iter().find(|(n, _)| *n == s).map(|(_, v)| *v).ok_or_else(|| {
            let quoted: Vec<String> = Self::NAMES.iter().map(|(n, _)| format!("\"{n}\"")).collect();
            let list = match quoted.split_last() {
                Some((last, [])) => last.clone(),
                Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                None => String::new(),
            };
            format!("\"{s}\" is not {}; use {list}", Self::WHAT)
        })
    }
}

/// Serializes and deserializes named enums by their names, for the enums that cross the
/// control socket: the names are the ones the file uses.
#[macro_export]
macro_rules! serde_by_name {
    ($($ty:ty),+ $(,)?) => {
        $(
            impl serde::Serialize for $ty {
                fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                    serializer.serialize_str($crate::config::Named::name(*self))
                }
            }

            impl<'de> serde::Deserialize<'de> for $ty {
                fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                    let name = <String as serde::Deserialize>::deserialize(deserializer)?;
                    <$ty as $crate::config::Named>::parse(&name).map_err(serde::de::Error::custom)
                }
            }
        )+
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AdminState, FailureMode, Forwarding, IcmpEcho, Protocol, Scheduler, XdpMode};

    fn round_trips<T: Named + core::fmt::Debug>() {
        for (name, value) in T::NAMES {
            assert_eq!(value.name(), *name);
            assert_eq!(T::parse(name).map(Named::name), Ok(*name));
        }
    }

    #[test]
    fn every_name_parses_back() {
        round_trips::<XdpMode>();
        round_trips::<IcmpEcho>();
        round_trips::<Protocol>();
        round_trips::<Scheduler>();
        round_trips::<Forwarding>();
        round_trips::<FailureMode>();
        round_trips::<AdminState>();
    }

    #[test]
    fn errors_list_the_names() {
        assert_eq!(
            XdpMode::parse("fast"),
            Err("\"fast\" is not an XDP mode; use \"native\", \"generic\" or \"auto\"".into())
        );
        assert_eq!(Forwarding::parse("gre"), Err("\"gre\" is not an available forwarding mode; use \"ipip\"".into()));
    }
}
