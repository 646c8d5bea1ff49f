//! The [`Firewall`] trait (whole nftables tables, replaced atomically) and its implementation
//! over the `nft` binary's JSON interface.
//!
//! Every table this crate owns is generated whole from the crate's state and swapped in one
//! nft transaction (`add table; delete table; add table; …`), so a restarted daemon never
//! duplicates rules and no packet ever sees a half-written table.

use std::borrow::Cow;
use std::future::Future;

use nftables::batch::Batch;
use nftables::helper::{NftablesError, apply_ruleset_with_args_async};
use nftables::schema::{NfListObject, Nftables, Table};
use nftables::types::NfFamily;

use crate::conntrack;
use crate::error::NetError;
use crate::netns::Netns;

/// One nftables table with everything in it (chains, rules, sets, maps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRuleset {
    /// The table's family.
    pub family: NfFamily,
    /// The table's name.
    pub name: String,
    /// Everything the table holds, in the order it is added.
    pub objects: Vec<NfListObject<'static>>,
}

impl TableRuleset {
    /// An empty table.
    pub fn new(family: NfFamily, name: impl Into<String>) -> Self {
        TableRuleset {
            family,
            name: name.into(),
            objects: Vec::new(),
        }
    }

    fn table(&self) -> Table<'static> {
        Table {
            family: self.family,
            name: Cow::Owned(self.name.clone()),
            handle: None,
        }
    }

    /// The nft document that replaces the table atomically: adding it first makes the delete
    /// succeed when the table does not exist yet.
    pub fn to_nftables(&self) -> Nftables<'static> {
        let mut batch = Batch::new();
        batch.add(NfListObject::Table(self.table()));
        batch.delete(NfListObject::Table(self.table()));
        batch.add(NfListObject::Table(self.table()));
        for object in &self.objects {
            batch.add(object.clone());
        }
        batch.to_nftables()
    }

    /// The nft document that deletes the table, whether or not it exists.
    pub fn delete_nftables(family: NfFamily, name: &str) -> Nftables<'static> {
        let table = TableRuleset::new(family, name).table();
        let mut batch = Batch::new();
        batch.add(NfListObject::Table(table.clone()));
        batch.delete(NfListObject::Table(table));
        batch.to_nftables()
    }

    /// The document as JSON (what is fed to `nft -j -f -`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.to_nftables()).expect("an nftables document serialises")
    }
}

/// Kernel packet filtering, one whole table at a time.
pub trait Firewall: Send + Sync + 'static {
    /// Replaces the table with `table` (creating it if absent) in one transaction.
    fn apply_table(
        &self,
        table: &TableRuleset,
    ) -> impl Future<Output = Result<(), NetError>> + Send;

    /// Deletes the table; a table that does not exist is not an error.
    fn delete_table(
        &self,
        family: NfFamily,
        name: &str,
    ) -> impl Future<Output = Result<(), NetError>> + Send;

    /// Forgets the tracked connections to and from `address` (it is leaving); returns how many.
    fn forget_connections(
        &self,
        address: std::net::Ipv4Addr,
    ) -> impl Future<Output = Result<usize, NetError>> + Send;
}

/// [`Firewall`] over the `nft` binary (`nft -j -f -`), run in the network namespace of the
/// calling thread, or through `ip netns exec NAME` when built with [`NftFirewall::in_named_netns`].
#[derive(Debug, Clone)]
pub struct NftFirewall {
    program: String,
    args: Vec<String>,
    /// The namespace of a named-netns firewall (conntrack is per namespace too).
    netns: Option<Netns>,
}

impl Default for NftFirewall {
    fn default() -> Self {
        NftFirewall::new()
    }
}

impl NftFirewall {
    /// Runs `nft` from `PATH` in the caller's network namespace.
    pub fn new() -> Self {
        NftFirewall {
            program: "nft".into(),
            args: Vec::new(),
            netns: None,
        }
    }

    /// Runs `ip netns exec NAME nft`: the table lives in the named namespace whatever thread
    /// calls.
    pub fn in_named_netns(name: &str) -> Self {
        NftFirewall {
            program: "ip".into(),
            args: vec!["netns".into(), "exec".into(), name.into(), "nft".into()],
            netns: Some(Netns::named(name)),
        }
    }

    async fn run(&self, document: &Nftables<'_>, context: String) -> Result<(), NetError> {
        apply_ruleset_with_args_async(document, Some(&self.program), self.args.iter())
            .await
            .map_err(|e| NetError::Nftables {
                context,
                message: describe(e),
            })
    }
}

fn describe(error: NftablesError) -> String {
    match error {
        NftablesError::NftFailed { stderr, stdout, .. } => {
            let text = if stderr.trim().is_empty() {
                stdout
            } else {
                stderr
            };
            text.split_whitespace().collect::<Vec<_>>().join(" ")
        }
        other => other.to_string(),
    }
}

impl Firewall for NftFirewall {
    async fn apply_table(&self, table: &TableRuleset) -> Result<(), NetError> {
        tracing::debug!(table = %table.name, objects = table.objects.len(), "applying nftables table");
        self.run(
            &table.to_nftables(),
            format!("applying table {}", table.name),
        )
        .await
    }

    async fn delete_table(&self, family: NfFamily, name: &str) -> Result<(), NetError> {
        tracing::debug!(table = %name, "deleting nftables table");
        self.run(
            &TableRuleset::delete_nftables(family, name),
            format!("deleting table {name}"),
        )
        .await
    }

    async fn forget_connections(&self, address: std::net::Ipv4Addr) -> Result<usize, NetError> {
        let netns = self.netns.clone();
        let forgotten = tokio::task::spawn_blocking(move || {
            match netns {
                Some(netns) => netns.run(|| conntrack::forget_connections_of(address))?,
                None => conntrack::forget_connections_of(address),
            }
            .map_err(|e| NetError::io(format!("forgetting the connections of {address}"), e))
        })
        .await
        .map_err(|e| NetError::io("conntrack task", std::io::Error::other(e)))??;
        tracing::debug!(%address, forgotten, "forgot tracked connections");
        Ok(forgotten)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacing_a_table_adds_deletes_and_re_adds_it() {
        let json = TableRuleset::new(NfFamily::IP, "shoal").to_json();
        let commands = json["nftables"].as_array().unwrap();
        assert_eq!(commands.len(), 3);
        assert_eq!(commands[0]["add"]["table"]["name"], "shoal");
        assert_eq!(commands[0]["add"]["table"]["family"], "ip");
        assert_eq!(commands[1]["delete"]["table"]["name"], "shoal");
        assert_eq!(commands[2]["add"]["table"]["name"], "shoal");
        let del =
            serde_json::to_value(TableRuleset::delete_nftables(NfFamily::IP, "shoal")).unwrap();
        assert_eq!(del["nftables"].as_array().unwrap().len(), 2);
        assert_eq!(del["nftables"][1]["delete"]["table"]["name"], "shoal");
    }
}
