"""gpuhub tasks: `invoke --list` shows them, `invoke --help TASK` explains one."""

from invoke import Collection

from gpuhub.tasks import stack, users

ns = Collection()
for t in (stack.up, stack.down, stack.restart, stack.build, stack.status, stack.logs,
          users.adduser, users.deluser, users.passwd, users.users):
    ns.add_task(t)
