//! The class enums of each stage, with the exact wire names of the contract.

use std::fmt;
use std::str::FromStr;

/// A class name that is not part of the taxonomy (from a CSV or heads file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {stage} class {name:?}")]
pub struct UnknownClass {
    pub stage: &'static str,
    pub name: String,
}

/// What every stage's class enum offers: its wire names, in a fixed order that
/// is also the order of a head's outputs.
pub trait TaxonomyClass: Copy + Eq + fmt::Debug + 'static {
    /// Name of the stage, for error messages ("image", "room", …).
    const STAGE: &'static str;
    /// Every class, in head-output order.
    const ALL: &'static [Self];
    /// The name used in the JSON contract and in `labels.csv`.
    fn name(self) -> &'static str;
    /// Position of the class in [`Self::ALL`].
    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|c| *c == self)
            .expect("every class is listed in ALL")
    }
    /// Parses a wire name.
    fn from_name(name: &str) -> Result<Self, UnknownClass> {
        Self::ALL
            .iter()
            .copied()
            .find(|c| c.name() == name)
            .ok_or_else(|| UnknownClass {
                stage: Self::STAGE,
                name: name.to_owned(),
            })
    }
}

macro_rules! taxonomy_enum {
    ($(#[$meta:meta])* $name:ident, $stage:literal, { $($variant:ident => $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl TaxonomyClass for $name {
            const STAGE: &'static str = $stage;
            const ALL: &'static [Self] = &[$(Self::$variant),+];
            fn name(self) -> &'static str {
                match self { $(Self::$variant => $wire),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $name {
            type Err = UnknownClass;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::from_name(s)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }
    };
}

taxonomy_enum!(
    /// Stage 1: is this a photo of a property's inside, its outside, or neither?
    ImageClass, "image", {
        Indoor => "indoor",
        Outdoor => "outdoor",
        Other => "other",
    }
);

taxonomy_enum!(
    /// Stage 2 for indoor photos.
    RoomClass, "room", {
        LivingRoom => "living_room",
        Kitchen => "kitchen",
        Bathroom => "bathroom",
        Bedroom => "bedroom",
        OtherRoom => "other_room",
    }
);

taxonomy_enum!(
    /// Stage 3, only for `other_room`.
    RoomSubclass, "room subclass", {
        HallCorridor => "hall_corridor",
        Room => "room",
        Scullery => "scullery",
    }
);

taxonomy_enum!(
    /// Stage 2 for outdoor photos.
    SceneClass, "scene", {
        Facade => "facade",
        View => "view",
        Street => "street",
        BalconyGarden => "balcony-garden",
        BuildingPart => "building_part",
        NoBuilding => "no_building",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        for c in SceneClass::ALL {
            assert_eq!(SceneClass::from_name(c.name()).unwrap(), *c);
        }
        assert_eq!(
            "balcony-garden".parse::<SceneClass>().unwrap(),
            SceneClass::BalconyGarden
        );
        assert_eq!(RoomClass::OtherRoom.to_string(), "other_room");
        assert_eq!(RoomSubclass::Scullery.index(), 2);
        assert_eq!(ImageClass::ALL.len(), 3);
    }

    #[test]
    fn unknown_names_are_refused() {
        let err = "garage".parse::<SceneClass>().unwrap_err();
        assert_eq!(err.to_string(), "unknown scene class \"garage\"");
        assert!(
            "Kitchen".parse::<RoomClass>().is_err(),
            "names are case-sensitive"
        );
    }
}
