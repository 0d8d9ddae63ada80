%% Evaluated on the hosts phase's RabbitMQ node (`rabbitmqctl eval`; the
%% bench puts the window in ms for WINDOW). Sums the reductions of every
%% process twice, WINDOW apart, by the process's initial call (a quorum
%% queue is an ra_server_proc, a connection a rabbit_reader and a
%% rabbit_writer, each channel a rabbit_channel), and prints the busiest
%% kinds: reductions, processes, kind. The scan itself shows up as
%% erpc:execute_call and costs about as much as the idle node.
Snap = fun() ->
  lists:foldl(fun(P, Acc) ->
    case erlang:process_info(P, [reductions, initial_call, dictionary]) of
      undefined -> Acc;
      Info ->
        R = proplists:get_value(reductions, Info),
        K = case lists:keyfind('$initial_call', 1, proplists:get_value(dictionary, Info)) of
              {_, IC} -> IC;
              false -> proplists:get_value(initial_call, Info)
            end,
        maps:update_with(K, fun({V, N}) -> {V + R, N + 1} end, {R, 1}, Acc)
    end end, #{}, erlang:processes())
end,
S1 = Snap(), timer:sleep(WINDOW), S2 = Snap(),
D = maps:fold(fun(K, {V2, N2}, Acc) -> {V1, _} = maps:get(K, S1, {0, 0}), [{V2 - V1, N2, K} | Acc] end, [], S2),
Top = lists:sublist(lists:reverse(lists:sort(D)), 14),
Total = lists:sum([V || {V, _, _} <- D]),
lists:flatten(io_lib:format("total ~p~n~s", [Total, [io_lib:format("~12b ~6b ~p~n", [V, N, K]) || {V, N, K} <- Top]])).
