//! A map that is a vector while small and a hash map once large.
//!
//! Most maps in the broker's per-device state hold one or two entries (a
//! device's subscriptions, the children of a `devices/{id}` tree node, the
//! subscribers of `$commands/{id}/#`). A `HashMap` holding one entry
//! allocates four buckets and is 48 bytes inline; this map is 24 bytes inline
//! and allocates exactly what its few entries need, switching to a hash map
//! (boxed, so the inline size stays small) past [`FEW`] entries.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// Entries kept in a vector; one more and the map becomes a hash map.
pub const FEW: usize = 8;

/// A map from `K` to `V`, compact while it holds few entries.
#[derive(Debug, Clone)]
pub enum SmallMap<K, V> {
    /// Up to [`FEW`] entries, searched linearly.
    Few(Vec<(K, V)>),
    /// More than [`FEW`] entries.
    Many(Box<HashMap<K, V>>),
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap::Few(Vec::new())
    }
}

impl<K: Eq + Hash, V> SmallMap<K, V> {
    /// An empty map (no allocation).
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        match self {
            SmallMap::Few(entries) => entries.len(),
            SmallMap::Many(map) => map.len(),
        }
    }

    /// Whether the map holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value for `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            SmallMap::Few(entries) => entries
                .iter()
                .find(|(k, _)| k.borrow() == key)
                .map(|(_, v)| v),
            SmallMap::Many(map) => map.get(key),
        }
    }

    /// The value for `key`, mutably.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            SmallMap::Few(entries) => entries
                .iter_mut()
                .find(|(k, _)| k.borrow() == key)
                .map(|(_, v)| v),
            SmallMap::Many(map) => map.get_mut(key),
        }
    }

    /// Whether `key` has a value.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(slot) = self.get_mut(&key) {
            return Some(std::mem::replace(slot, value));
        }
        self.push_new(key, value);
        None
    }

    /// The value for `key`, inserting `V::default()` first if there is none.
    pub fn get_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        let index = match self {
            SmallMap::Few(entries) => entries.iter().position(|(k, _)| *k == key),
            SmallMap::Many(map) => return map.entry(key).or_default(),
        };
        match index {
            Some(index) => self.value_at(index),
            None => self.push_new(key, V::default()),
        }
    }

    /// Removes `key`; returns its value.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let removed = match self {
            SmallMap::Few(entries) => {
                let index = entries.iter().position(|(k, _)| k.borrow() == key)?;
                Some(entries.swap_remove(index).1)
            }
            SmallMap::Many(map) => map.remove(key),
        };
        if self.is_empty() {
            // Nothing kept allocated for an empty map.
            *self = SmallMap::default();
        }
        removed
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        let (few, many) = match self {
            SmallMap::Few(entries) => (Some(entries.iter().map(|(k, v)| (k, v))), None),
            SmallMap::Many(map) => (None, Some(map.iter())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    /// Every key, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    /// Every value, mutably, in no particular order.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        let (few, many) = match self {
            SmallMap::Few(entries) => (Some(entries.iter_mut().map(|(_, v)| v)), None),
            SmallMap::Many(map) => (None, Some(map.values_mut())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    /// The values, by value, in no particular order.
    pub fn into_values(self) -> impl Iterator<Item = V> {
        let (few, many) = match self {
            SmallMap::Few(entries) => (Some(entries.into_iter().map(|(_, v)| v)), None),
            SmallMap::Many(map) => (None, Some(map.into_values())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    fn value_at(&mut self, index: usize) -> &mut V {
        match self {
            SmallMap::Few(entries) => &mut entries[index].1,
            SmallMap::Many(_) => unreachable!("indices exist only in the small form"),
        }
    }

    /// Adds an entry known to be absent, growing the vector one entry at a
    /// time (a few entries never pay for spare capacity) or turning it into
    /// a hash map past [`FEW`].
    fn push_new(&mut self, key: K, value: V) -> &mut V {
        if let SmallMap::Few(entries) = self
            && entries.len() >= FEW
        {
            let mut map = HashMap::with_capacity(entries.len() + 1);
            map.extend(entries.drain(..));
            *self = SmallMap::Many(Box::new(map));
        }
        match self {
            SmallMap::Few(entries) => {
                entries.reserve_exact(1);
                entries.push((key, value));
                let last = entries.len() - 1;
                &mut entries[last].1
            }
            SmallMap::Many(map) => map.entry(key).or_insert(value),
        }
    }
}

impl<K: Eq + Hash, V> FromIterator<(K, V)> for SmallMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        let mut map = SmallMap::new();
        for (key, value) in entries {
            map.insert(key, value);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_map_across_the_switch_to_a_hash_map() {
        let mut map: SmallMap<u32, String> = SmallMap::new();
        for i in 0..20 {
            assert_eq!(map.insert(i, i.to_string()), None);
            assert_eq!(map.len(), i as usize + 1);
            assert_eq!(matches!(map, SmallMap::Many(_)), i as usize >= FEW);
        }
        assert_eq!(map.insert(3, "three".into()), Some("3".into()));
        assert_eq!(map.get(&3).map(String::as_str), Some("three"));
        assert!(map.contains_key(&19) && !map.contains_key(&20));
        let mut keys: Vec<u32> = map.keys().copied().collect();
        keys.sort();
        assert_eq!(keys, (0..20).collect::<Vec<_>>());
        for value in map.values_mut() {
            value.push('!');
        }
        assert_eq!(map.get(&0).map(String::as_str), Some("0!"));
        for i in 0..20 {
            assert!(map.remove(&i).is_some());
        }
        assert!(map.is_empty());
        assert!(matches!(&map, SmallMap::Few(v) if v.capacity() == 0));
    }

    #[test]
    fn get_or_default_inserts_once_and_borrowed_keys_work() {
        let mut map: SmallMap<Box<str>, u32> = SmallMap::new();
        *map.get_or_default("a".into()) += 1;
        *map.get_or_default("a".into()) += 1;
        *map.get_or_default("b".into()) += 5;
        assert_eq!(map.get("a"), Some(&2));
        assert_eq!(map.get_mut("b").map(|v| *v), Some(5));
        assert_eq!(map.remove("a"), Some(2));
        assert_eq!(map.remove("a"), None);
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn small_maps_allocate_only_their_entries() {
        let mut map: SmallMap<u64, u64> = SmallMap::new();
        map.insert(1, 1);
        assert!(matches!(&map, SmallMap::Few(v) if v.capacity() == 1));
        assert_eq!(std::mem::size_of::<SmallMap<u64, u64>>(), 24);
    }
}
