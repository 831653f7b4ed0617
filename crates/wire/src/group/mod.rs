//! Consumer groups: the embedded consumer protocol and the assignors the
//! group leader runs. The membership state machine and its async driver
//! build on these.

pub mod admin;
pub mod assignor;
pub mod consumer;
pub mod membership;
pub mod next;
mod offsets;
pub mod protocol;

pub use admin::{GroupDescription, GroupListing, GroupMember};
pub use assignor::{Assignor, Member, Plan, TopicCounts};
pub use consumer::{
    CommitHandle, GroupConfig, GroupConsumer, GroupMetadata, GroupMetadataHandle, GroupProtocol,
    NoListener, RebalanceListener,
};
pub use offsets::GroupOffsets;
pub use protocol::{Assignment, MemberMetadataError, Subscription, CONSUMER_PROTOCOL_VERSION};
