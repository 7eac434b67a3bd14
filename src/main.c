/* Entry point: command line, then the supervisor. */
int main(void) { return 0; }
