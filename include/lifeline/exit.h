/* Process exit codes: the command line's contract. */
#ifndef LIFELINE_EXIT_H
#define LIFELINE_EXIT_H

enum exit_code {
    EXIT_CLEAN = 0,   /* clean shutdown, or --check ok */
    EXIT_RUNTIME = 1, /* cannot bind, a worker could not start, ... */
    EXIT_USAGE = 2,   /* bad command line or bad config */
};

#endif
