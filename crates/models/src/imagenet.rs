//! ImageNet-1k class names, in the order of the logits of every 1000-class zoo model.

/// The 1000 ImageNet-1k class descriptions (first WordNet lemma of each synset, as timm's
/// `ImageNetInfo` gives them), indexed by class id.
pub fn class_names() -> Vec<&'static str> {
    CLASSES.lines().collect()
}

const CLASSES: &str = include_str!("../data/imagenet_classes.txt");
