//! The one way a reply reaches a device, and what a session adds up to.
//!
//! Every reply the driver writes goes through [`Tracker::send`], which shows it to the
//! [`Observer`](crate::observe::Observer) before queueing it, and counts messages accepted and
//! refused; [`Tracker::finish`] hands the observer the session's summary.

use super::{Conn, Inbound};
use crate::observe::{About, Command, EndReason, ReplyEvent, SessionSummary, SessionView, TlsInfo};
use crate::session::Session;
use smtp2oauth_proto::{Reply, SessionError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};

/// One session as its observer sees it.
pub(super) struct Tracker {
    view: SessionView,
    observer: Option<Arc<dyn crate::observe::Observer>>,
    /// The last device the session was identified as (the view's goes with a TLS upgrade).
    last_device: Option<String>,
    accepted: u64,
    refused: u64,
    bytes: u64,
    started: Instant,
}

impl Tracker {
    pub(super) fn new(ctx: &Inbound, listener: &str, peer: SocketAddr, id: u64) -> Tracker {
        Tracker {
            view: SessionView {
                id,
                peer,
                listener: listener.to_string(),
                tls: None,
                device: None,
                account: None,
                username: None,
            },
            observer: ctx.observer.clone(),
            last_device: None,
            accepted: 0,
            refused: 0,
            bytes: 0,
            started: Instant::now(),
        }
    }

    pub(super) fn id(&self) -> u64 {
        self.view.id
    }

    /// The session now runs over TLS.
    pub(super) fn tls(&mut self, tls: TlsInfo) {
        self.view.tls = Some(tls);
    }

    /// A login was attempted with this username.
    pub(super) fn tried(&mut self, username: &str) {
        self.view.username = Some(username.to_string());
    }

    /// Bytes read by one connection of the session (plain, then TLS).
    pub(super) fn read(&mut self, bytes: u64) {
        self.bytes += bytes;
    }

    /// Shows `reply` to the observer, counts it, and queues it for the device.
    pub(super) fn send<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        session: &Session,
        command: Command,
        reply: &Reply,
        about: About,
        refusal: Option<&SessionError>,
    ) {
        let device = session.device();
        self.view.device = device.map(|d| d.name.clone());
        self.view.account = device.map(|d| d.account.clone());
        if self.view.device.is_some() {
            self.last_device.clone_from(&self.view.device);
        }
        self.observe(command, reply, about, refusal);
        conn.queue(reply);
    }

    /// Shows `reply` to the observer and counts it (the caller sends it).
    pub(super) fn observe(
        &mut self,
        command: Command,
        reply: &Reply,
        about: About,
        refusal: Option<&SessionError>,
    ) {
        let event = ReplyEvent {
            session: &self.view,
            command,
            reply,
            about: &about,
            refusal,
        };
        if event.accepted_message() {
            self.accepted += 1;
        } else if event.refused_message() {
            self.refused += 1;
        }
        if let Some(o) = &self.observer {
            o.reply(&event);
        }
    }

    /// The session is over: hands the observer its summary.
    pub(super) fn finish(self, end: EndReason) {
        let Some(observer) = &self.observer else {
            return;
        };
        observer.ended(&SessionSummary {
            id: self.view.id,
            peer: self.view.peer,
            listener: self.view.listener,
            tls: self.view.tls,
            device: self.last_device,
            username: self.view.username,
            accepted: self.accepted,
            refused: self.refused,
            bytes: self.bytes,
            duration: self.started.elapsed(),
            end,
        });
    }
}
