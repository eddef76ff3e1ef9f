//! Node metadata (`NodeMeta`) and the two custom broadcasts that ride on SWIM datagrams: a
//! node's metadata record and its "I am leaving" notice.
//!
//! Holds the bounded store of the newest record seen per node and the `foca::BroadcastHandler`
//! that decides whether a received record is news worth passing on. No IO, no clock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use foca::{BroadcastHandler, Invalidates, PostcardCodec};
use serde::{Deserialize, Serialize};

use super::identity::MemberId;
use crate::ids::NodeId;
use crate::spec::DriverKind;

/// At most this many labels per node.
pub const MAX_LABELS: usize = 32;
/// A label key is at most this many bytes.
pub const MAX_LABEL_KEY_BYTES: usize = 63;
/// A label value is at most this many bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = 128;
/// At most this many runtimes are listed.
pub const MAX_RUNTIMES: usize = 4;
/// The agent version string is at most this many bytes.
pub const MAX_AGENT_VERSION_BYTES: usize = 64;
/// An encoded metadata record is at most this many bytes (the field bounds above allow about
/// 7.4 KB; this leaves room for the SWIM header in one packet).
pub const MAX_META_RECORD_BYTES: usize = 8 * 1024;
/// The store remembers records for at most this many nodes. Records of nodes SWIM does not
/// know are swept every `ORPHAN_SWEEP_MS` (a record may arrive just before its node's first
/// membership update; if swept, the pull repair fetches it again).
pub const MAX_META_ENTRIES: usize = 8 * 1024;
/// See [`MAX_META_ENTRIES`].
pub const ORPHAN_SWEEP_MS: u64 = 30_000;

/// What a node tells the cluster about itself: capacity, what it has allocated, labels and
/// where to reach it. Versioned: `Membership` assigns `version` and peers keep the newest per
/// `(incarnation, version)`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// Assigned by `Membership::set_meta`; grows by one per published change within a life.
    pub version: u64,
    /// Arbitrary `k=v` labels (`region`, `zone`, ...): at most [`MAX_LABELS`], keys at most
    /// [`MAX_LABEL_KEY_BYTES`], values at most [`MAX_LABEL_VALUE_BYTES`] bytes.
    pub labels: BTreeMap<String, String>,
    /// CPU capacity in millicores (1000 = one core).
    pub cpu_millis: u64,
    /// Memory capacity in bytes.
    pub memory_bytes: u64,
    /// CPU allocated to instances placed here, in millicores.
    pub allocated_cpu_millis: u64,
    /// Memory allocated to instances placed here, in bytes.
    pub allocated_memory_bytes: u64,
    /// A draining node accepts no new slots.
    pub draining: bool,
    /// Runtime drivers available on this node (at most [`MAX_RUNTIMES`]).
    pub runtimes: Vec<DriverKind>,
    /// The agent's version (at most [`MAX_AGENT_VERSION_BYTES`] bytes).
    pub agent_version: String,
    /// Multiaddrs (text) where this node listens, with the same bounds as `MemberId::addrs`.
    pub addrs: Vec<String>,
}

/// Why a `NodeMeta` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("{count} labels, at most {MAX_LABELS} are allowed")]
    TooManyLabels { count: usize },
    #[error("label key {key:?} is empty or longer than {MAX_LABEL_KEY_BYTES} bytes")]
    BadLabelKey { key: String },
    #[error("label {key:?}: value longer than {MAX_LABEL_VALUE_BYTES} bytes")]
    LabelValueTooLong { key: String },
    #[error("{count} runtimes, at most {MAX_RUNTIMES} are allowed")]
    TooManyRuntimes { count: usize },
    #[error("agent version longer than {MAX_AGENT_VERSION_BYTES} bytes")]
    AgentVersionTooLong,
    #[error("addresses: {0}")]
    Addrs(super::identity::IdentityError),
    #[error("encoded metadata is {len} bytes, at most {MAX_META_RECORD_BYTES} are allowed")]
    TooBig { len: usize },
}

impl NodeMeta {
    /// Checks every bound listed on the fields.
    pub fn validate(&self) -> Result<(), MetaError> {
        if self.labels.len() > MAX_LABELS {
            return Err(MetaError::TooManyLabels {
                count: self.labels.len(),
            });
        }
        for (k, v) in &self.labels {
            if k.is_empty() || k.len() > MAX_LABEL_KEY_BYTES {
                return Err(MetaError::BadLabelKey { key: k.clone() });
            }
            if v.len() > MAX_LABEL_VALUE_BYTES {
                return Err(MetaError::LabelValueTooLong { key: k.clone() });
            }
        }
        if self.runtimes.len() > MAX_RUNTIMES {
            return Err(MetaError::TooManyRuntimes {
                count: self.runtimes.len(),
            });
        }
        if self.agent_version.len() > MAX_AGENT_VERSION_BYTES {
            return Err(MetaError::AgentVersionTooLong);
        }
        // Same bounds as an identity's addresses.
        MemberId::life(NodeId("x".into()), 0, 0, self.addrs.clone())
            .validate()
            .map_err(MetaError::Addrs)?;
        Ok(())
    }
}

/// The newest metadata of one life of a node, as gossiped and as answered to a pull.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MetaRecord {
    pub node: NodeId,
    pub incarnation: u64,
    /// Shared with `Member::meta` and with the node core's `PeerMeta`: a member's metadata is
    /// held once per node however many views read it.
    pub meta: Arc<NodeMeta>,
}

impl MetaRecord {
    pub fn stamp(&self) -> Stamp {
        Stamp {
            incarnation: self.incarnation,
            version: self.meta.version,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(&Item::Meta(self.clone())).expect("encoding to a Vec cannot fail")
    }
}

/// Orders records of one node: a newer life beats any version of an older one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Stamp {
    pub incarnation: u64,
    pub version: u64,
}

/// One custom broadcast item. The enum tag is the item's wire version: add variants, never
/// change one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Item {
    /// A node's metadata.
    Meta(MetaRecord),
    /// The node leaves on purpose: its coming `Down` is a `Left`.
    Leaving {
        node: NodeId,
        incarnation: u64,
        renewal: u32,
    },
}

/// The first fields of an encoded `Item::Meta` (postcard encodes fields in order, so a prefix
/// type reads them without the rest).
#[derive(Deserialize)]
enum ItemHead {
    Meta {
        node: NodeId,
        incarnation: u64,
        version: u64,
    },
}

impl Item {
    /// The node and stamp of an encoded `Item::Meta`, without decoding the record; None for
    /// anything else.
    pub fn meta_stamp(bytes: &[u8]) -> Option<(NodeId, Stamp)> {
        if bytes.len() > MAX_META_RECORD_BYTES {
            return None;
        }
        let (
            ItemHead::Meta {
                node,
                incarnation,
                version,
            },
            _,
        ) = postcard::take_from_bytes::<ItemHead>(bytes).ok()?;
        Some((
            node,
            Stamp {
                incarnation,
                version,
            },
        ))
    }

    pub fn decode(bytes: &[u8]) -> Result<Item, ItemError> {
        if bytes.len() > MAX_META_RECORD_BYTES {
            return Err(ItemError::TooBig);
        }
        let item: Item = postcard::from_bytes(bytes).map_err(|_| ItemError::Undecodable)?;
        if let Item::Meta(r) = &item {
            r.meta.validate().map_err(|_| ItemError::Invalid)?;
        }
        Ok(item)
    }
}

/// Why a broadcast item from a peer was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ItemError {
    #[error("broadcast item too big")]
    TooBig,
    #[error("broadcast item undecodable")]
    Undecodable,
    #[error("broadcast item breaks a metadata bound")]
    Invalid,
    #[error("metadata store full")]
    StoreFull,
}

/// The newest metadata and leaving notices seen, shared between `Membership` and the broadcast
/// handler that foca owns (foca gives no access to its handler, hence the shared cell; it is
/// never contended: both sides run on the caller's thread).
#[derive(Default)]
pub(crate) struct Store {
    pub metas: BTreeMap<NodeId, MetaRecord>,
    /// `(incarnation, renewal)` of the life that announced it is leaving.
    pub leaving: BTreeMap<NodeId, (u64, u32)>,
    /// Nodes whose metadata changed since `Membership` last looked.
    pub meta_changed: Vec<NodeId>,
    /// Nodes that announced leaving since `Membership` last looked.
    pub left: Vec<NodeId>,
    pub rejected: u64,
    /// Set only where many `Membership`s live in one process (the simulator).
    pub share: Option<RecordShare>,
}

/// One copy of each node's newest metadata record for every `Membership` of a process that
/// holds it (see [`super::Membership::share_records`]). An agent runs one `Membership` and has
/// no use for it; the simulator runs thousands, each holding every member's record, and
/// without it a fleet's records would be held once per simulated node. Sharing changes no
/// decision: a record is shared only when equal to the one received, and records are never
/// mutated in place.
///
/// It shares members' identities the same way: every SWIM identity decoded from a datagram
/// (`SwimCodec`) takes the one node id and address list the share holds for that node when
/// they are equal, so foca's member lists hold one copy of each across the process.
#[derive(Clone, Default)]
pub struct RecordShare(Arc<Mutex<Shared>>);

#[derive(Default)]
struct Shared {
    /// Per node, the stamp of the record offered for sharing and the record while anyone
    /// holds it.
    records: BTreeMap<NodeId, (Stamp, Weak<NodeMeta>)>,
    /// Per node, its id and the address list of the newest identity decoded.
    identities: BTreeMap<NodeId, Arc<[String]>>,
}

impl RecordShare {
    /// At most this many nodes' records are offered for sharing; past it records are held
    /// unshared, as without a share.
    pub const MAX_NODES: usize = 1 << 20;

    /// The shared copy of `record`'s metadata if one is held and equal; otherwise `record`'s
    /// own, now offered to the others.
    fn share(&self, record: &MetaRecord) -> Arc<NodeMeta> {
        let mut shared = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let known = &mut shared.records;
        let stamp = record.stamp();
        match known.get(&record.node) {
            Some((s, held)) if *s == stamp => {
                if let Some(held) = held.upgrade()
                    && *held == *record.meta
                {
                    return held;
                }
            }
            Some((s, held)) if *s > stamp && held.strong_count() > 0 => {
                return record.meta.clone();
            }
            None if known.len() >= Self::MAX_NODES => return record.meta.clone(),
            _ => {}
        }
        known.insert(record.node.clone(), (stamp, Arc::downgrade(&record.meta)));
        record.meta.clone()
    }

    /// `id` holding the shared copy of its node id, and of its address list when equal to the
    /// one held; otherwise its own list, now offered to the others. Equal values only: the
    /// identity compares, orders and encodes as before.
    pub(crate) fn share_identity(&self, mut id: MemberId) -> MemberId {
        let mut shared = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let known = &mut shared.identities;
        match known.get_key_value(&id.node) {
            Some((node, addrs)) => {
                id.node = node.clone();
                if *addrs == id.addrs {
                    id.addrs = addrs.clone();
                    return id;
                }
            }
            None if known.len() >= Self::MAX_NODES => return id,
            None => {}
        }
        // A map keeps its key on insert: the shared node id stays the one held.
        known.insert(id.node.clone(), id.addrs.clone());
        id
    }
}

impl Store {
    /// Keeps `record` if it is newer than what is known. Returns whether it was.
    pub fn offer_meta(&mut self, mut record: MetaRecord) -> Result<bool, ItemError> {
        match self.metas.get(&record.node) {
            Some(known) if known.stamp() >= record.stamp() => return Ok(false),
            None if self.metas.len() >= MAX_META_ENTRIES => return Err(ItemError::StoreFull),
            _ => {}
        }
        if let Some(share) = &self.share {
            record.meta = share.share(&record);
        }
        self.meta_changed.push(record.node.clone());
        self.metas.insert(record.node.clone(), record);
        Ok(true)
    }

    fn offer_leaving(&mut self, node: NodeId, life: (u64, u32)) -> Result<bool, ItemError> {
        match self.leaving.get(&node) {
            Some(known) if *known >= life => return Ok(false),
            None if self.leaving.len() >= MAX_META_ENTRIES => return Err(ItemError::StoreFull),
            _ => {}
        }
        self.left.push(node.clone());
        self.leaving.insert(node, life);
        Ok(true)
    }

    pub fn stamp_of(&self, node: &NodeId) -> Option<Stamp> {
        self.metas.get(node).map(MetaRecord::stamp)
    }
}

#[derive(Clone, Default)]
pub(crate) struct SharedStore(Arc<Mutex<Store>>);

/// Foca's postcard codec (the wire is unchanged), with every decoded sender and update
/// identity given the shared copies of its node id and addresses when the store holds a
/// [`RecordShare`] (the simulator; an agent has none and decodes as foca does).
pub(crate) struct SwimCodec(pub SharedStore);

impl SwimCodec {
    fn shared(&self, id: MemberId) -> MemberId {
        let share = self.0.lock().share.clone();
        match share {
            Some(share) => share.share_identity(id),
            None => id,
        }
    }
}

impl foca::Codec<MemberId> for SwimCodec {
    type Error = <PostcardCodec as foca::Codec<MemberId>>::Error;

    fn encode_header(
        &mut self,
        header: &foca::Header<MemberId>,
        buf: impl bytes::BufMut,
    ) -> Result<(), Self::Error> {
        PostcardCodec.encode_header(header, buf)
    }

    fn decode_header(
        &mut self,
        buf: impl bytes::Buf,
    ) -> Result<foca::Header<MemberId>, Self::Error> {
        let mut header = PostcardCodec.decode_header(buf)?;
        header.src = self.shared(header.src);
        Ok(header)
    }

    fn encode_member(
        &mut self,
        member: &foca::Member<MemberId>,
        buf: impl bytes::BufMut,
    ) -> Result<(), Self::Error> {
        PostcardCodec.encode_member(member, buf)
    }

    fn decode_member(
        &mut self,
        buf: impl bytes::Buf,
    ) -> Result<foca::Member<MemberId>, Self::Error> {
        let m: foca::Member<MemberId> = PostcardCodec.decode_member(buf)?;
        let id = self.shared(m.id().clone());
        Ok(foca::Member::new(id, m.incarnation(), m.state()))
    }
}

impl SharedStore {
    pub fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock already ended the process (panics are bugs here).
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What foca disseminates and dedups a broadcast by: one slot per node and kind; a newer item
/// of the same slot replaces the older one in foca's backlog.
pub(crate) struct ItemKey {
    node: NodeId,
    leaving: bool,
    order: (u64, u64),
}

impl Invalidates for ItemKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.node == other.node && self.leaving == other.leaving && self.order >= other.order
    }
}

/// The `foca::BroadcastHandler`: stores news, tells foca to pass it on, drops the rest.
pub(crate) struct Handler(pub SharedStore);

impl BroadcastHandler<MemberId> for Handler {
    type Key = ItemKey;
    type Error = ItemError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&MemberId>,
    ) -> Result<Option<ItemKey>, ItemError> {
        let mut store = self.0.lock();
        // Most items a node receives are retransmissions of records it holds already: compare
        // the stamp, read from the item's first fields, before decoding the whole record.
        if let Some((node, stamp)) = Item::meta_stamp(data)
            && store.stamp_of(&node) >= Some(stamp)
        {
            return Ok(None);
        }
        let item = Item::decode(data);
        let item = item.inspect_err(|_| store.rejected += 1)?;
        let key = match item {
            Item::Meta(record) => {
                let key = ItemKey {
                    node: record.node.clone(),
                    leaving: false,
                    order: (record.incarnation, record.meta.version),
                };
                store.offer_meta(record)?.then_some(key)
            }
            Item::Leaving {
                node,
                incarnation,
                renewal,
            } => {
                let key = ItemKey {
                    node: node.clone(),
                    leaving: true,
                    order: (incarnation, u64::from(renewal)),
                };
                store
                    .offer_leaving(node, (incarnation, renewal))?
                    .then_some(key)
            }
        };
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_of_an_encoded_record_is_read_without_decoding_it() {
        let record = MetaRecord {
            node: NodeId("n".repeat(52).into()),
            incarnation: 7,
            meta: NodeMeta {
                version: 42,
                ..meta()
            }
            .into(),
        };
        let bytes = record.encode();
        assert_eq!(
            Item::meta_stamp(&bytes),
            Some((record.node.clone(), record.stamp()))
        );
        let leaving = postcard::to_allocvec(&Item::Leaving {
            node: record.node.clone(),
            incarnation: 7,
            renewal: 1,
        })
        .unwrap();
        assert_eq!(Item::meta_stamp(&leaving), None);
        assert_eq!(Item::meta_stamp(&bytes[..3]), None);
    }

    fn meta() -> NodeMeta {
        NodeMeta {
            version: 1,
            labels: [("region".to_string(), "eu".to_string())].into(),
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            runtimes: vec![DriverKind::Docker],
            agent_version: "0.1.0".into(),
            addrs: vec!["/ip4/10.0.0.1/tcp/7946".into()],
            ..NodeMeta::default()
        }
    }

    #[test]
    fn bounds_are_enforced() {
        assert_eq!(meta().validate(), Ok(()));
        let mut m = meta();
        m.labels = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert!(matches!(m.validate(), Err(MetaError::TooManyLabels { .. })));
        let mut m = meta();
        m.labels = [("k".repeat(64), String::new())].into();
        assert!(matches!(m.validate(), Err(MetaError::BadLabelKey { .. })));
        let mut m = meta();
        m.labels = [("k".into(), "v".repeat(129))].into();
        assert!(matches!(
            m.validate(),
            Err(MetaError::LabelValueTooLong { .. })
        ));
        let mut m = meta();
        m.addrs = vec!["a".into(); 9];
        assert!(matches!(m.validate(), Err(MetaError::Addrs(_))));
    }

    #[test]
    fn the_largest_valid_meta_fits_the_record_bound() {
        let m = NodeMeta {
            version: u64::MAX,
            labels: (0..MAX_LABELS)
                .map(|i| (format!("{i:0>63}"), "v".repeat(MAX_LABEL_VALUE_BYTES)))
                .collect(),
            cpu_millis: u64::MAX,
            memory_bytes: u64::MAX,
            allocated_cpu_millis: u64::MAX,
            allocated_memory_bytes: u64::MAX,
            draining: true,
            runtimes: vec![DriverKind::Docker; MAX_RUNTIMES],
            agent_version: "v".repeat(MAX_AGENT_VERSION_BYTES),
            addrs: vec!["a".repeat(128); 8],
        };
        assert_eq!(m.validate(), Ok(()));
        let rec = MetaRecord {
            node: NodeId("n".repeat(52).into()),
            incarnation: u64::MAX,
            meta: m.into(),
        };
        assert!(
            rec.encode().len() <= MAX_META_RECORD_BYTES,
            "{}",
            rec.encode().len()
        );
    }

    #[test]
    fn store_keeps_only_newer_records() {
        let mut s = Store::default();
        let rec = |inc, v| {
            let mut m = meta();
            m.version = v;
            MetaRecord {
                node: NodeId("a".into()),
                incarnation: inc,
                meta: m.into(),
            }
        };
        assert_eq!(s.offer_meta(rec(1, 2)), Ok(true));
        assert_eq!(s.offer_meta(rec(1, 2)), Ok(false));
        assert_eq!(s.offer_meta(rec(1, 1)), Ok(false));
        assert_eq!(s.offer_meta(rec(2, 1)), Ok(true));
        assert_eq!(
            s.stamp_of(&NodeId("a".into())),
            Some(Stamp {
                incarnation: 2,
                version: 1
            })
        );
    }

    #[test]
    fn codecs_given_one_share_decode_one_copy_of_a_members_id_and_equal_addresses() {
        use foca::Codec;
        let share = RecordShare::default();
        let codecs: Vec<SwimCodec> = (0..2)
            .map(|_| {
                let store = SharedStore::default();
                store.lock().share = Some(share.clone());
                SwimCodec(store)
            })
            .collect();
        let id = |inc, addr: &str| {
            MemberId::new(NodeId("a".into()), inc, vec![addr.to_string()]).unwrap()
        };
        let wire = |id: MemberId| {
            let mut buf = Vec::new();
            PostcardCodec
                .encode_member(&foca::Member::alive(id), &mut buf)
                .unwrap();
            buf
        };
        let decode = |c: &mut SwimCodec, bytes: &[u8]| c.decode_member(bytes).unwrap().id().clone();
        let mut codecs = codecs;
        let first = decode(&mut codecs[0], &wire(id(1, "/ip4/10.0.0.1/tcp/1")));
        let second = decode(&mut codecs[1], &wire(id(1, "/ip4/10.0.0.1/tcp/1")));
        assert_eq!(first, id(1, "/ip4/10.0.0.1/tcp/1"));
        assert!(Arc::ptr_eq(&first.node.0, &second.node.0));
        assert!(Arc::ptr_eq(&first.addrs, &second.addrs));
        // Another life with other addresses keeps its own list (and the node id is shared).
        let moved = decode(&mut codecs[1], &wire(id(2, "/ip4/10.0.0.2/tcp/1")));
        assert_eq!(moved, id(2, "/ip4/10.0.0.2/tcp/1"));
        assert!(Arc::ptr_eq(&first.node.0, &moved.node.0));
        assert!(!Arc::ptr_eq(&first.addrs, &moved.addrs));
        // A codec without a share decodes as foca's own.
        let mut alone = SwimCodec(SharedStore::default());
        let own = decode(&mut alone, &wire(id(1, "/ip4/10.0.0.1/tcp/1")));
        assert_eq!(own, first);
        assert!(!Arc::ptr_eq(&own.node.0, &first.node.0));
    }

    #[test]
    fn stores_given_one_share_hold_one_copy_of_an_equal_record_and_their_own_of_another() {
        let share = RecordShare::default();
        let stores: Vec<SharedStore> = (0..3).map(|_| SharedStore::default()).collect();
        let mut handlers: Vec<Handler> = stores.iter().map(|s| Handler(s.clone())).collect();
        for s in &stores {
            s.lock().share = Some(share.clone());
        }
        let held = |s: &SharedStore| s.lock().metas[&NodeId("a".into())].meta.clone();
        let rec = |version, agent: &str| MetaRecord {
            node: NodeId("a".into()),
            incarnation: 1,
            meta: NodeMeta {
                version,
                agent_version: agent.into(),
                ..meta()
            }
            .into(),
        };
        // Each store decodes its own copy from the wire; all but the first keep the first's.
        for h in &mut handlers {
            assert!(
                h.receive_item(&rec(2, "0.1.0").encode(), None)
                    .unwrap()
                    .is_some()
            );
        }
        assert!(Arc::ptr_eq(&held(&stores[0]), &held(&stores[1])));
        assert!(Arc::ptr_eq(&held(&stores[0]), &held(&stores[2])));
        // A newer record replaces the shared one for those that receive it.
        for h in &mut handlers[..2] {
            assert!(
                h.receive_item(&rec(3, "0.2.0").encode(), None)
                    .unwrap()
                    .is_some()
            );
        }
        assert!(Arc::ptr_eq(&held(&stores[0]), &held(&stores[1])));
        assert_eq!(held(&stores[0]).agent_version, "0.2.0");
        assert_eq!(held(&stores[2]).agent_version, "0.1.0");
        // A record under the same stamp but with other content is never swapped for the
        // shared one: what each store holds is what it received.
        let other = SharedStore::default();
        other.lock().share = Some(share.clone());
        Handler(other.clone())
            .receive_item(&rec(3, "forged").encode(), None)
            .unwrap();
        assert_eq!(held(&other).agent_version, "forged");
        assert_eq!(held(&stores[0]).agent_version, "0.2.0");
        // Nothing keeps a record alive but the stores holding it.
        let weak = Arc::downgrade(&held(&stores[2]));
        drop(stores);
        drop(handlers);
        assert!(weak.upgrade().is_none());
    }

    #[test]
    fn handler_passes_news_on_and_drops_repeats_and_junk() {
        let store = SharedStore::default();
        let mut h = Handler(store.clone());
        let rec = MetaRecord {
            node: NodeId("a".into()),
            incarnation: 1,
            meta: meta().into(),
        };
        let bytes = rec.encode();
        assert!(h.receive_item(&bytes, None).unwrap().is_some());
        assert!(h.receive_item(&bytes, None).unwrap().is_none());
        assert!(h.receive_item(&[0xff, 0xff], None).is_err());
        assert_eq!(store.lock().rejected, 1);
    }
}
