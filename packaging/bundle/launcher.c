/*
 * /opt/xenhad/bin/xenhad: runs the bundled CPython on the xenhad package.
 *
 * An ELF of its own rather than a shell script, so that nothing of dom0's userland is
 * needed (the bundle's tests run it in an empty chroot). It replaces itself with the
 * interpreter (execv): systemd's main PID, the signals it sends and sd_notify's sender
 * stay one process, as with a venv. Like the interpreter, it is linked against the
 * bundle's own glibc and started by the bundle's own dynamic loader (PT_INTERP).
 *
 * -I: no PYTHON* variable, user site or working directory changes what runs;
 * -B: nothing is written under /opt (every module is compiled at build time);
 * -X utf8: text is UTF-8 whatever locale dom0's environment names.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef PREFIX
#define PREFIX "/opt/xenhad"
#endif
#ifndef PYTHON
#define PYTHON "python3.11"
#endif

int main(int argc, char **argv)
{
    static const char python[] = PREFIX "/bin/" PYTHON;
    const char *head[] = {python, "-I", "-B", "-X", "utf8", "-m", "xenhad"};
    size_t nhead = sizeof head / sizeof head[0];
    char **args = calloc(nhead + (size_t)argc, sizeof *args);

    if (args == NULL) {
        perror("xenhad");
        return 127;
    }
    for (size_t i = 0; i < nhead; i++)
        args[i] = (char *)head[i];
    for (int i = 1; i < argc; i++)
        args[nhead + (size_t)i - 1] = argv[i];
    execv(python, args);
    fprintf(stderr, "xenhad: cannot run %s: %s\n", python, strerror(errno));
    return 127;
}
