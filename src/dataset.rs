//! Labelled photo sets in the format of `shared/data/labels.csv`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use photolabel_taxonomy::{ImageClass, RoomClass, RoomSubclass, SceneClass, TaxonomyClass};

/// One labelled photo. A row is labelled at the levels whose class is set.
#[derive(Debug, Clone)]
pub struct LabelledPhoto {
    /// Absolute (or CSV-relative resolved) path of the photo.
    pub path: PathBuf,
    /// The path as written in the CSV: the key of the embedding cache.
    pub key: String,
    pub image_class: ImageClass,
    pub room: Option<RoomClass>,
    pub subclass: Option<RoomSubclass>,
    pub scene: Option<SceneClass>,
    pub source: String,
    /// The source's own label (`vn_listings_dev`: `label|photo-or-render|sure-or-unsure`).
    pub source_label: String,
}

impl LabelledPhoto {
    /// The end-to-end class this row expects, if it is labelled that finely.
    pub fn leaf(&self) -> Option<&'static str> {
        match self.image_class {
            ImageClass::Other => Some(ImageClass::Other.name()),
            ImageClass::Indoor => match (self.room, self.subclass) {
                (Some(RoomClass::OtherRoom), Some(sub)) => Some(sub.name()),
                // An other_room row without a subclass cannot be scored end to end.
                (Some(RoomClass::OtherRoom), None) => None,
                (Some(room), _) => Some(room.name()),
                (None, _) => None,
            },
            ImageClass::Outdoor => self.scene.map(|s| s.name()),
        }
    }

    pub fn file_name(&self) -> &str {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(&self.key)
    }
}

fn optional<C: TaxonomyClass>(value: Option<&str>) -> anyhow::Result<Option<C>> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(name) => Ok(Some(C::from_name(name)?)),
    }
}

/// Reads a labels CSV (columns `path,image_class` required;
/// `room_class,room_subclass,scene_class,source,source_label,split` optional). Paths are
/// relative to the CSV's folder. With `split`, only rows of that split are
/// kept (a CSV without a `split` column then keeps nothing — an error).
pub fn read_labels(csv_path: &Path, split: Option<&str>) -> anyhow::Result<Vec<LabelledPhoto>> {
    let base = csv_path.parent().unwrap_or(Path::new("."));
    let mut reader = csv::Reader::from_path(csv_path)
        .with_context(|| format!("cannot read {}", csv_path.display()))?;
    let headers = reader.headers()?.clone();
    let column = |name: &str| headers.iter().position(|h| h == name);
    let (Some(path_col), Some(image_col)) = (column("path"), column("image_class")) else {
        bail!(
            "{} needs the columns `path` and `image_class`",
            csv_path.display()
        );
    };
    let (room_col, sub_col, scene_col) = (
        column("room_class"),
        column("room_subclass"),
        column("scene_class"),
    );
    let (source_col, split_col) = (column("source"), column("split"));
    let source_label_col = column("source_label");
    if split.is_some() && split_col.is_none() {
        bail!(
            "{} has no `split` column, so --split cannot select rows",
            csv_path.display()
        );
    }
    let mut photos = Vec::new();
    for (line, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: row {}", csv_path.display(), line + 2))?;
        let get = |col: Option<usize>| col.and_then(|c| record.get(c));
        let row_split = get(split_col).map(str::to_owned);
        if let Some(wanted) = split {
            if row_split.as_deref() != Some(wanted) {
                continue;
            }
        }
        let parse = || -> anyhow::Result<LabelledPhoto> {
            let key = get(Some(path_col)).unwrap_or_default().to_owned();
            Ok(LabelledPhoto {
                path: base.join(&key),
                image_class: ImageClass::from_name(
                    get(Some(image_col)).unwrap_or_default().trim(),
                )?,
                room: optional(get(room_col))?,
                subclass: optional(get(sub_col))?,
                scene: optional(get(scene_col))?,
                source: get(source_col).unwrap_or("").to_owned(),
                source_label: get(source_label_col).unwrap_or("").to_owned(),
                key,
            })
        };
        photos.push(parse().with_context(|| format!("{}: row {}", csv_path.display(), line + 2))?);
    }
    Ok(photos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rows_and_filters_by_split() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("labels.csv");
        std::fs::write(
            &csv,
            "path,image_class,room_class,room_subclass,scene_class,source,source_label,split\n\
             a.jpg,indoor,kitchen,,,houses,k,train\n\
             b.jpg,indoor,other_room,hall_corridor,,places,c,val\n\
             c.jpg,outdoor,,,balcony-garden,places,y,val\n\
             d.jpg,other,,,,docs,f,val\n\
             e.jpg,indoor,,,,places,office,val\n",
        )
        .unwrap();
        let val = read_labels(&csv, Some("val")).unwrap();
        assert_eq!(val.len(), 4);
        assert_eq!(val[0].leaf(), Some("hall_corridor"));
        assert_eq!(val[1].leaf(), Some("balcony-garden"));
        assert_eq!(val[2].leaf(), Some("other"));
        assert_eq!(
            val[3].leaf(),
            None,
            "indoor without a room is scored at stage 1 only"
        );
        assert_eq!(val[0].path, dir.path().join("b.jpg"));
        assert_eq!(read_labels(&csv, None).unwrap().len(), 5);
    }

    #[test]
    fn refuses_unknown_classes_and_missing_columns() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("labels.csv");
        std::fs::write(&csv, "path,image_class,scene_class\na.jpg,outdoor,garage\n").unwrap();
        let err = read_labels(&csv, None).unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown scene class \"garage\""),
            "{err:#}"
        );
        assert!(read_labels(&csv, Some("val")).is_err(), "no split column");
        std::fs::write(&csv, "file,label\na.jpg,indoor\n").unwrap();
        assert!(read_labels(&csv, None).is_err());
    }
}
