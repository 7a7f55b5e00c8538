"""gpuhub tasks: `invoke --list` shows them, `invoke --help TASK` explains one."""

from invoke import Collection

from gpuhub.tasks import backup, export, metrics, nodes, stack, tls, usage, users

ns = Collection()
for t in (stack.up, stack.down, stack.restart, stack.build, stack.status, stack.logs, stack.compose,
          stack.gpus, stack.doctor, users.adduser, users.deluser, users.passwd, users.users,
          backup.backup, backup.restore, tls.tls_selfsigned, export.export_z2jh,
          nodes.node_add, usage.usage, metrics.metrics_config):
    ns.add_task(t)
# Commands never read the terminal: a password piped to `--password-stdin` must reach
# only the command it is meant for (invoke would otherwise mirror stdin to every run).
ns.configure({"run": {"in_stream": False}})
