/*
** hold.c: the critical section of one `etcdctl lock KEY hold ...` round in the
** lock benchmark. etcdctl runs it once the lock is held and releases the lock
** when it exits, so it stamps the acquisition, holds, stamps the release:
**
**   hold SECONDS LOGFILE REQUESTED
**
** appends "REQUESTED ACQUIRED RELEASED" (epoch seconds, CLOCK_REALTIME, the
** clock of the other contenders' logs) to LOGFILE.
*/

#define _GNU_SOURCE

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now (void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main (int argc, char **argv) {
    double acquired = now(), hold, released;
    struct timespec ts;
    FILE *f;
    if (argc != 4) {
        fprintf(stderr, "usage: hold SECONDS LOGFILE REQUESTED\n");
        return 2;
    }
    hold = atof(argv[1]);
    ts.tv_sec = (time_t)hold;
    ts.tv_nsec = (long)((hold - (double)ts.tv_sec) * 1e9);
    nanosleep(&ts, NULL);
    released = now();
    f = fopen(argv[2], "a");
    if (f == NULL) return 1;
    fprintf(f, "%s %.6f %.6f\n", argv[3], acquired, released);
    return fclose(f) == 0 ? 0 : 1;
}
