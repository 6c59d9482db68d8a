//! The Windows service: `smtp2oauth service install|uninstall`, and `service run`, the command
//! line the service manager starts.
//!
//! The service runs exactly what `serve` runs in a console ([`serve::run_with`]); only the
//! controls differ: the service manager's stop (and shutdown) control cancels the relay's stop
//! token, its parameter-change control (`sc.exe control smtp2oauth paramchange`) reloads the
//! listeners' certificates, and the log goes to a rotating file because a service has no
//! standard error.
//!
//! It runs as the virtual account `NT SERVICE\smtp2oauth`, not LocalSystem: the relay parses
//! SMTP from every device on the LAN, and a flaw in that must not hand over the machine. A
//! virtual account needs no password, can bind any port (Windows has no privileged ports), and
//! can touch only what grants it access: `install` gives it (with SYSTEM and Administrators, and
//! nobody else) the store, the configuration file and the log directory.

use crate::logfile::LogFile;
use crate::signals::Controls;
use crate::{LogFormat, logging, serve};
use anyhow::{Context, Result, anyhow, bail};
use smtp2oauth_platform::SERVICE_NAME;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing::{error, info};
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{
    self, ServiceControlHandlerResult, ServiceStatusHandle,
};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

const DISPLAY_NAME: &str = "smtp2oauth SMTP relay";
const DESCRIPTION: &str = "Relays mail from printers, scanners and other devices to Microsoft 365 \
    or Google with OAuth 2.0 (smtp2oauth).";
/// Log files are rotated at this size; this many old ones are kept.
const LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
const LOG_KEEP: usize = 9;

/// `smtp2oauth service ...`.
#[derive(clap::Subcommand)]
pub enum ServiceCommand {
    /// Install the Windows service (or update it: the executable's path and the options), running
    /// as NT SERVICE\smtp2oauth, started at boot. Checks the configuration first, and gives the
    /// store, the configuration file and the log directory to SYSTEM, Administrators and the
    /// service alone. Start it with `sc.exe start smtp2oauth` or `Start-Service smtp2oauth`.
    Install {
        /// Where the service writes its log (rotated at 10 MB, 10 files).
        /// Default: %ProgramData%\smtp2oauth\logs.
        #[arg(long)]
        log_dir: Option<PathBuf>,
    },
    /// Stop and remove the Windows service. The store, the configuration and the logs stay.
    Uninstall,
    /// What the service manager runs; not for a console (use `serve` there).
    #[command(hide = true)]
    Run {
        #[arg(long)]
        log_dir: PathBuf,
    },
}

/// Runs a `service` command with the configuration file `config`.
pub fn run(config: Option<PathBuf>, command: ServiceCommand) -> ExitCode {
    let result = match command {
        ServiceCommand::Install { log_dir } => install(config, log_dir),
        ServiceCommand::Uninstall => uninstall(),
        ServiceCommand::Run { log_dir } => dispatch(config, log_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smtp2oauth: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn default_log_dir() -> PathBuf {
    smtp2oauth_config::program_data()
        .join(SERVICE_NAME)
        .join("logs")
}

fn account_name() -> String {
    format!(r"NT SERVICE\{SERVICE_NAME}")
}

// --- install and uninstall ------------------------------------------------------------------

fn install(config: Option<PathBuf>, log_dir: Option<PathBuf>) -> Result<()> {
    let config = config.ok_or_else(|| {
        anyhow!("give the configuration file: smtp2oauth service install --config C:\\ProgramData\\smtp2oauth\\smtp2oauth.toml")
    })?;
    let config = std::path::absolute(&config)?;
    let config_dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
    // The service works in the configuration's directory: relative paths in it mean the same
    // here as they will for the service.
    std::env::set_current_dir(&config_dir)
        .with_context(|| format!("cannot enter {}", config_dir.display()))?;
    let loaded = smtp2oauth_config::load(Some(&config)).map_err(|e| {
        anyhow!(
            "{e}\nfix the configuration first (smtp2oauth check-config --config \"{}\")",
            config.display()
        )
    })?;
    let store = std::path::absolute(&loaded.config.store.dir)?;
    let log_dir = std::path::absolute(log_dir.unwrap_or_else(default_log_dir))?;
    secure(&store, &config, &log_dir)?;
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    warn_if_private_location(&exe);
    let info = ServiceInfo {
        name: SERVICE_NAME.into(),
        display_name: DISPLAY_NAME.into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe.clone(),
        launch_arguments: vec![
            "service".into(),
            "run".into(),
            "--config".into(),
            config.clone().into(),
            "--log-dir".into(),
            log_dir.clone().into(),
        ],
        dependencies: vec![],
        account_name: Some(account_name().into()),
        account_password: None,
    };
    let updated = create_or_update(&info)?;
    println!(
        "{} service {SERVICE_NAME} ({DISPLAY_NAME}), running as {}\n  program:       {}\n  configuration: {}\n  store:         {}\n  log:           {}\n\
         SYSTEM, Administrators and {} alone may use the store, the configuration and the log.\n\
         Start it: sc.exe start {SERVICE_NAME}   (or: Start-Service {SERVICE_NAME})",
        if updated { "updated" } else { "installed" },
        account_name(),
        exe.display(),
        config.display(),
        store.display(),
        log_dir.join(crate::logfile::LOG_NAME).display(),
        account_name(),
    );
    Ok(())
}

/// Makes the store, the configuration file and the log directory private to SYSTEM,
/// Administrators and the service account (and this user, who installs it).
fn secure(store: &Path, config: &Path, log_dir: &Path) -> Result<()> {
    for dir in [store, log_dir] {
        refuse_system_folder(dir)?;
        smtp2oauth_platform::create_private_dir_all(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        smtp2oauth_platform::windows::make_private(dir, &[])
            .with_context(|| format!("cannot restrict access to {}", dir.display()))?;
    }
    if !config.starts_with(store) {
        smtp2oauth_platform::windows::make_private(config, &[])
            .with_context(|| format!("cannot restrict access to {}", config.display()))?;
    }
    Ok(())
}

/// The store and the log directory get a protected ACL that their contents inherit: never do
/// that to a drive or a folder Windows or the users own.
fn refuse_system_folder(dir: &Path) -> Result<()> {
    let depth = dir
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .count();
    let system = [
        "ProgramData",
        "ProgramFiles",
        "ProgramFiles(x86)",
        "SystemRoot",
        "windir",
        "USERPROFILE",
        "PUBLIC",
    ]
    .iter()
    .filter_map(std::env::var_os)
    .any(|folder| same_path(Path::new(&folder), dir));
    if depth < 2 || system {
        bail!(
            "{} is a system folder; the store and the log need a folder of their own, such as {}",
            dir.display(),
            default_log_dir()
                .parent()
                .unwrap_or(Path::new(""))
                .display()
        );
    }
    Ok(())
}

fn same_path(a: &Path, b: &Path) -> bool {
    let norm = |p: &Path| p.to_string_lossy().trim_end_matches('\\').to_lowercase();
    norm(a) == norm(b)
}

/// The virtual account cannot read a program in an administrator's profile (Downloads).
fn warn_if_private_location(exe: &Path) {
    if let Some(profile) = std::env::var_os("USERPROFILE")
        && exe.starts_with(&profile)
    {
        eprintln!(
            "smtp2oauth: warning: {} is in your user profile, which the service account cannot read; \
             move it to C:\\Program Files\\smtp2oauth and run `service install` from there",
            exe.display()
        );
    }
}

/// Creates the service, or updates its configuration if it exists; true if it existed.
fn create_or_update(info: &ServiceInfo) -> Result<bool> {
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .context(
        "cannot open the service manager (run this in an elevated prompt: Run as administrator)",
    )?;
    let access = ServiceAccess::CHANGE_CONFIG | ServiceAccess::START | ServiceAccess::QUERY_STATUS;
    let (service, updated) = match manager.open_service(SERVICE_NAME, access) {
        Ok(service) => {
            service
                .change_config(info)
                .context("cannot update the service")?;
            (service, true)
        }
        Err(_) => (
            manager
                .create_service(info, access)
                .context("cannot create the service")?,
            false,
        ),
    };
    service
        .set_description(DESCRIPTION)
        .context("cannot set the service's description")?;
    if let Err(e) = restart_on_failure(&service) {
        eprintln!(
            "smtp2oauth: warning: cannot set the service to restart after a failure ({e:#}); \
             set it on the Recovery tab of the service in services.msc"
        );
    }
    Ok(updated)
}

/// Restart after a crash or an error exit: 5 s, then 30 s, then every minute; the count starts
/// again after a day without failures.
fn restart_on_failure(service: &windows_service::service::Service) -> Result<()> {
    let restart = |secs| ServiceAction {
        action_type: ServiceActionType::Restart,
        delay: Duration::from_secs(secs),
    };
    service
        .update_failure_actions(ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(86_400)),
            reboot_msg: None,
            command: None,
            actions: Some(vec![restart(5), restart(30), restart(60)]),
        })
        .context("failure actions")?;
    service
        .set_failure_actions_on_non_crash_failures(true)
        .context("failure actions on error exits")
}

fn uninstall() -> Result<()> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .context("cannot open the service manager (run this in an elevated prompt: Run as administrator)")?;
    let service = manager
        .open_service(
            SERVICE_NAME,
            ServiceAccess::STOP | ServiceAccess::DELETE | ServiceAccess::QUERY_STATUS,
        )
        .with_context(|| format!("the service {SERVICE_NAME} is not installed"))?;
    if service.query_status()?.current_state != ServiceState::Stopped {
        println!("stopping {SERVICE_NAME} ...");
        service.stop().context("cannot stop the service")?;
        wait_stopped(&service, Duration::from_secs(120))?;
    }
    service.delete().context("cannot remove the service")?;
    println!(
        "removed the service {SERVICE_NAME}. The store, the configuration and the logs stay \
         (by default in {}); delete that folder to remove them too.",
        smtp2oauth_config::default_store_dir().display()
    );
    Ok(())
}

fn wait_stopped(service: &windows_service::service::Service, limit: Duration) -> Result<()> {
    let start = std::time::Instant::now();
    while service.query_status()?.current_state != ServiceState::Stopped {
        if start.elapsed() > limit {
            bail!("the service did not stop within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

// --- running as the service -----------------------------------------------------------------

/// What `service run` was started with, for the service's main function.
struct Launch {
    config: Option<PathBuf>,
    log_dir: PathBuf,
}

static LAUNCH: OnceLock<Launch> = OnceLock::new();

/// Hands this thread to the service manager, which calls [`service_main`] on another.
fn dispatch(config: Option<PathBuf>, log_dir: PathBuf) -> Result<()> {
    let _ = LAUNCH.set(Launch { config, log_dir });
    windows_service::service_dispatcher::start(SERVICE_NAME, ffi::ENTRY).map_err(|e| {
        anyhow!("{e}: `service run` is started by the Windows service manager; in a console use `smtp2oauth serve`")
    })
}

mod ffi {
    // The macro expands to the `extern "system"` entry point the service manager calls, which
    // turns its raw arguments into a Vec<OsString>; its unsafe code is windows-service's own.
    use super::service_main as main;
    windows_service::define_windows_service!(service_main, main);
    pub(super) const ENTRY: extern "system" fn(u32, *mut *mut u16) = service_main;
}

fn service_main(_arguments: Vec<OsString>) {
    let Some(launch) = LAUNCH.get() else {
        return;
    };
    if let Some(dir) = launch.config.as_deref().and_then(Path::parent) {
        let _ = std::env::set_current_dir(dir);
    }
    match LogFile::open(&launch.log_dir, LOG_MAX_BYTES, LOG_KEEP) {
        Ok(file) => logging::init_file(LogFormat::Text, None, Arc::new(file)),
        // Without a log there is still the service manager's event in the System log.
        Err(_) => logging::init(LogFormat::Text, None),
    }
    if let Err(e) = run_service(launch) {
        error!("the service could not run: {e:#}");
    }
}

fn run_service(launch: &Launch) -> Result<()> {
    let (controls, reload) = Controls::new();
    let stop = controls.stop.clone();
    let status = service_control_handler::register(SERVICE_NAME, move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            info!("service stop requested: shutting down");
            stop.cancel();
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::ParamChange => {
            let _ = reload.send("service parameter change");
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    })?;
    report(
        status,
        ServiceState::StartPending,
        1,
        ServiceExitCode::NO_ERROR,
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("smtp2oauth")
        .build()?;
    let result = runtime.block_on(async {
        tokio::spawn(report_stopping(status, controls.stop.clone()));
        serve::run_with(launch.config.clone(), controls, || {
            let _ = report(status, ServiceState::Running, 0, ServiceExitCode::NO_ERROR);
        })
        .await
    });
    let exit = match &result {
        Ok(()) => ServiceExitCode::NO_ERROR,
        Err(e) => {
            error!("{e:#}");
            ServiceExitCode::ServiceSpecific(1)
        }
    };
    // Tasks still blocked (a verifier thread, a slow disk) must not hold the service in
    // "stopping" forever: everything that matters was recorded before run_with returned.
    runtime.shutdown_timeout(Duration::from_secs(5));
    report(status, ServiceState::Stopped, 0, exit)?;
    Ok(())
}

/// Once the relay is told to stop, tells the service manager it is stopping, with a new
/// checkpoint every few seconds while sessions finish and deliveries are recorded, so that it
/// does not take the orderly shutdown for a hang.
async fn report_stopping(status: ServiceStatusHandle, stop: tokio_util::sync::CancellationToken) {
    stop.cancelled().await;
    for checkpoint in 1.. {
        let _ = report(
            status,
            ServiceState::StopPending,
            checkpoint,
            ServiceExitCode::NO_ERROR,
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

fn report(
    status: ServiceStatusHandle,
    state: ServiceState,
    checkpoint: u32,
    exit_code: ServiceExitCode,
) -> windows_service::Result<()> {
    let controls_accepted = match state {
        ServiceState::Running => {
            ServiceControlAccept::STOP
                | ServiceControlAccept::SHUTDOWN
                | ServiceControlAccept::PARAM_CHANGE
        }
        _ => ServiceControlAccept::empty(),
    };
    let wait_hint = match state {
        ServiceState::StartPending => Duration::from_secs(60),
        ServiceState::StopPending => Duration::from_secs(15),
        _ => Duration::ZERO,
    };
    status.set_service_status(ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted,
        exit_code,
        checkpoint,
        wait_hint,
        process_id: None,
    })
}
