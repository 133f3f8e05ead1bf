//! Several depots and several topologies in one engine: a topology consuming two depots sees
//! their records merged in append order, and a second topology consumes one of them
//! independently.

use std::ops::Bound;
use std::time::Duration;

use lockstep::{Depot, Engine, NoMessages, TopologyBuilder};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Deposit {
    account: u32,
    amount: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Withdrawal {
    account: u32,
    amount: i64,
}

#[test]
fn two_depots_two_topologies_in_append_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let deposits = Depot::<Deposit>::hashed("deposits", 4, |d| d.account).expect("depot");
    let withdrawals = Depot::<Withdrawal>::hashed("withdrawals", 4, |w| w.account).expect("depot");

    // Withdrawals never overdraw: whether one applies depends on the deposits before it, so
    // the outcome checks the cross-depot order.
    let mut accounts = TopologyBuilder::<NoMessages>::new("accounts", 4);
    let balances = accounts.pstate::<u32, i64>("balances");
    let b = balances.clone();
    accounts.consume(&deposits, move |ctx, d: Deposit| {
        let balance = ctx.get(&b, &d.account)?.unwrap_or(0) + d.amount;
        ctx.put(&b, &d.account, &balance)?;
        ctx.record_outcome(&true)
    });
    let b = balances.clone();
    accounts.consume(&withdrawals, move |ctx, w: Withdrawal| {
        let balance = ctx.get(&b, &w.account)?.unwrap_or(0);
        let allowed = balance >= w.amount;
        if allowed {
            ctx.put(&b, &w.account, &(balance - w.amount))?;
        }
        ctx.record_outcome(&allowed)
    });

    let mut audit = TopologyBuilder::<NoMessages>::new("audit", 4);
    let deposit_counts = audit.pstate::<u32, u64>("deposit-counts");
    let c = deposit_counts.clone();
    audit.consume(&deposits, move |ctx, d: Deposit| {
        let n = ctx.get(&c, &d.account)?.unwrap_or(0) + 1;
        ctx.put(&c, &d.account, &n)
    });

    let engine = Engine::builder(dir.path())
        .depot(&deposits)
        .depot(&withdrawals)
        .topology(accounts.build().expect("accounts"))
        .topology(audit.build().expect("audit"))
        .open()
        .expect("open");

    // Per account: deposit 10, withdraw 10 (allowed), withdraw 1 (refused), deposit 5.
    let mut checks = Vec::new();
    for account in 0..20u32 {
        let d1 = engine
            .append(
                &deposits,
                &Deposit {
                    account,
                    amount: 10,
                },
            )
            .expect("append");
        let w1 = engine
            .append(
                &withdrawals,
                &Withdrawal {
                    account,
                    amount: 10,
                },
            )
            .expect("append");
        let w2 = engine
            .append(&withdrawals, &Withdrawal { account, amount: 1 })
            .expect("append");
        let d2 = engine
            .append(&deposits, &Deposit { account, amount: 5 })
            .expect("append");
        checks.push((d1, w1, w2, d2));
    }
    let timeout = Duration::from_secs(30);
    for (_, _, w2, d2) in &checks {
        engine.wait_for("accounts", *w2, timeout).expect("accounts");
        engine.wait_for("accounts", *d2, timeout).expect("accounts");
        engine.wait_for("audit", *d2, timeout).expect("audit");
    }
    let snapshot = engine.snapshot().expect("snapshot");
    for (d1, w1, w2, _) in &checks {
        let outcome = |id| {
            snapshot
                .outcome::<bool>("accounts", id)
                .expect("read")
                .expect("recorded")
                .value
        };
        assert!(outcome(*d1));
        assert!(outcome(*w1), "withdrawal after the deposit must see it");
        assert!(!outcome(*w2), "second withdrawal would overdraw");
    }
    let all = snapshot
        .range(&balances, Bound::Unbounded, Bound::Unbounded, 100)
        .expect("balances");
    assert_eq!(all.len(), 20);
    assert!(all.iter().all(|(_, balance)| *balance == 5));
    let counts = snapshot
        .range(&deposit_counts, Bound::Unbounded, Bound::Unbounded, 100)
        .expect("counts");
    assert!(counts.iter().all(|(_, n)| *n == 2));
    assert!(snapshot.batch_id("accounts").expect("batch") >= 1);
    assert!(snapshot.batch_id("audit").expect("batch") >= 1);
}
