/*
 * The pause container of a Kubernetes pod: holds the pod's namespaces, reaps the zombies it
 * inherits as PID 1 of a shared PID namespace, and exits when told to (SIGINT, SIGTERM).
 * Written for handover's tests after the behaviour of kubernetes/build/pause/linux/pause.c;
 * built with `gcc -static` by tests/image/build.sh --pause.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define VERSION "3.10-handover"

static void on_stop(int sig) {
  /* Only async-signal-safe calls here. */
  static const char msg[] = "pause: shutting down\n";
  (void)sig;
  (void)!write(STDERR_FILENO, msg, sizeof msg - 1);
  _exit(0);
}

static void on_child(int sig) {
  int saved = errno;
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
  errno = saved;
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-v") == 0) {
      printf("pause.c %s\n", VERSION);
      return 0;
    }
  }
  if (getpid() != 1) {
    fprintf(stderr, "pause: warning: not PID 1, zombies of others will not be reaped here\n");
  }
  struct sigaction stop = {.sa_handler = on_stop};
  sigemptyset(&stop.sa_mask);
  struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
  sigemptyset(&child.sa_mask);
  if (sigaction(SIGINT, &stop, NULL) < 0 || sigaction(SIGTERM, &stop, NULL) < 0 ||
      sigaction(SIGCHLD, &child, NULL) < 0) {
    perror("pause: sigaction");
    return 1;
  }
  for (;;) {
    pause();
  }
}
